// Run by `npm run build` during the slug compile: records when and from what the slug was built.
const fs = require("fs");

const info = {
  builtAt: new Date().toISOString(),
  sourceVersion: process.env.SOURCE_VERSION || null,
  node: process.version,
};
fs.writeFileSync("build-info.json", JSON.stringify(info, null, 2) + "\n");
console.log(`wrote build-info.json (node ${info.node})`);
