// An Express app on $PORT. No Procfile: the Node.js buildpack declares `web: npm start`.
const express = require("express");

const app = express();
app.get("/", (req, res) => {
  res.type("text").send(`Hello from ${process.env.DYNO || "express-web"} (Express)\n`);
});
app.listen(Number(process.env.PORT), () => console.log(`listening on ${process.env.PORT}`));
