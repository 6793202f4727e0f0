#!/usr/bin/env node
"use strict";
// usage: node node_worker.js <connstr> <schema> <seconds> <concurrency>
// graphile-worker 0.17 running the fault harness's ledger_job task (the same ledger
// rows as faults/app.py: a start, a sleep of payload.seconds, a finish) for <seconds>
// seconds, then stopping gracefully. NODE_PATH must reach graphile-worker.
const { run, Logger } = require("graphile-worker");

const [connectionString, schema, secondsText, concurrencyText] = process.argv.slice(2);
const logger = new Logger(() => (level, message) => {
  if (level !== "debug") process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});

async function record(helpers, event) {
  await helpers.query(
    "insert into faults_ledger (job_id, event, worker) values ($1, $2, $3)",
    [helpers.job.id, event, `node-${process.pid}`],
  );
}

async function main() {
  const runner = await run({
    connectionString,
    schema,
    logger,
    concurrency: Number(concurrencyText || "4"),
    pollInterval: 1000,
    noHandleSignals: false,
    taskList: {
      ledger_job: async (payload, helpers) => {
        await record(helpers, "start");
        await new Promise((resolve) => setTimeout(resolve, 1000 * Number(payload.seconds || 0.1)));
        await record(helpers, "finish");
      },
    },
    parsedCronItems: [],
  });
  const timer = setTimeout(() => runner.stop(), Number(secondsText) * 1000);
  try {
    await runner.promise;
  } finally {
    clearTimeout(timer);
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`error: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
