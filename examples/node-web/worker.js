// A background worker: logs a line every few seconds until told to stop.
const ms = require("ms");

const interval = Number(process.env.WORKER_INTERVAL || 5) * 1000;
const started = Date.now();
let tick = 0;

const timer = setInterval(() => {
  tick += 1;
  console.log(`worker: tick ${tick}, up ${ms(Date.now() - started)}`);
}, interval);

process.on("SIGTERM", () => {
  console.log("worker: got SIGTERM, stopping");
  clearInterval(timer);
});
