#!/usr/bin/env node
"use strict";
// usage: node add_jobs.js <connstr> <schema> <identifier> <count> [queue_name]
const { makeWorkerUtils } = require("graphile-worker");
const { logger, emit, parseArgs, parseCount, main } = require("./common");

const [connectionString, schema, identifier, countText, queueName] = parseArgs(
  "add_jobs.js <connstr> <schema> <identifier> <count> [queue_name]",
  4,
);

main(async () => {
  const count = parseCount(countText, "count");
  const utils = await makeWorkerUtils({ connectionString, schema, logger });
  try {
    const spec = queueName ? { queueName } : {};
    for (let i = 0; i < count; i++) {
      await utils.addJob(identifier, { n: i }, spec);
    }
  } finally {
    await utils.release();
  }
  emit({ added: count });
});
