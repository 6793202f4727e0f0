#!/usr/bin/env node
"use strict";
// usage: node run_worker.js <connstr> <schema> <seconds> <identifier> [...]
// Runs a long-lived worker (LISTEN/NOTIFY + polling every 1s) for <seconds>
// seconds, then stops it gracefully. If the environment variable
// INTEROP_CRONTAB is set, its text is used as the worker's crontab.
const { run } = require("graphile-worker");
const { logger, concurrency, parseArgs, makeTaskList, main } = require("./common");

const [connectionString, schema, secondsText, ...identifiers] = parseArgs(
  "run_worker.js <connstr> <schema> <seconds> <identifier> [...]",
  4,
);

main(async () => {
  const seconds = Number(secondsText);
  if (!(seconds >= 0)) throw new Error(`seconds must be a non-negative number, got ${JSON.stringify(secondsText)}`);
  const cron = process.env.INTEROP_CRONTAB
    ? { crontab: process.env.INTEROP_CRONTAB }
    : { parsedCronItems: [] };
  const runner = await run({
    connectionString,
    schema,
    logger,
    concurrency,
    pollInterval: 1000,
    taskList: makeTaskList(identifiers),
    ...cron,
  });
  let timeUp = false;
  const timer = setTimeout(() => {
    timeUp = true;
    runner.stop();
  }, seconds * 1000);
  try {
    await runner.promise;
  } finally {
    clearTimeout(timer);
  }
  // e.g. a breaking migration NOTIFY from another schema in the same database
  if (!timeUp) throw new Error("worker stopped before its time was up");
});
