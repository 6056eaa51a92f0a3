import http from "node:http";

/** The baseline: a minimal node:http server answering the same JSON as the route under test. */
const body = process.env.BASELINE_BODY ?? JSON.stringify({ status: "ok" });
http
  .createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
    });
  })
  .listen(Number(process.env.PORT), "127.0.0.1");
