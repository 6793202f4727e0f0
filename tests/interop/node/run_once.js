#!/usr/bin/env node
"use strict";
// usage: node run_once.js <connstr> <schema> <identifier> [<identifier> ...]
// Runs every job that is ready now, then exits.
const { runOnce } = require("graphile-worker");
const { logger, concurrency, parseArgs, makeTaskList, main } = require("./common");

const [connectionString, schema, ...identifiers] = parseArgs(
  "run_once.js <connstr> <schema> <identifier> [<identifier> ...]",
  3,
);

main(async () => {
  await runOnce({
    connectionString,
    schema,
    logger,
    concurrency,
    taskList: makeTaskList(identifiers),
  });
});
