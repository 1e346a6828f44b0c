// A small web app: answers on $PORT, as a Manifold web dyno must.
const http = require("http");
const fs = require("fs");
const os = require("os");
const ms = require("ms");

const started = Date.now();
const port = Number(process.env.PORT);
if (!port) {
  console.error("PORT is not set");
  process.exit(1);
}

const buildInfo = fs.existsSync("build-info.json")
  ? JSON.parse(fs.readFileSync("build-info.json", "utf8"))
  : {};

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ status: "ok", build: buildInfo }) + "\n");
    return;
  }
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(
    `Hello from ${process.env.DYNO || "node-web"} on ${os.hostname()}, up ${ms(Date.now() - started)}\n`
  );
});

server.listen(port, "0.0.0.0", () => console.log(`listening on ${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
