#!/usr/bin/env node
"use strict";
// The Node side of pgworker's benchmark (benchmarks/throughput.py drives it).
//
// usage: node perf.js migrate <connstr> <schema>
//        node perf.js addjobs <connstr> <schema> <jobs> <batch size>
//        node perf.js once <connstr> <schema> <concurrency> [--batching[=<size>]]
//        node perf.js run <connstr> <schema> <concurrency> [--batching[=<size>]]
//
// - migrate: installs graphile-worker's schema, prints {"migrated":true}.
// - addjobs: adds <jobs> `noop` jobs ({"n": i}) through WorkerUtils.addJobs, <batch size>
//   per call, on one connection; prints {"added": jobs, "seconds": s}, s timing the calls
//   only (not start-up, not the pool's first connection).
// - once: graphile-worker's runOnce: runs every runnable job, then exits.
// - run: graphile-worker's run() until SIGTERM or SIGINT, then a graceful stop.
//
// Tasks: `noop` does nothing; `latency` appends "<payload.n> <CLOCK_MONOTONIC ns>" to
// the file named by PGWORKER_BENCH_LATENCY_FILE the moment it starts (the Python side
// does the same with time.monotonic_ns(), the same clock). Settings are graphile-worker's
// defaults (its default logger included), except maxPoolSize, raised to concurrency + 1
// when the default 10 would be smaller. --batching turns on what graphile-worker's own
// perfTest uses: a local queue of <size> jobs (default: concurrency) and
// completeJobBatchDelay / failJobBatchDelay 0.
const fs = require("fs");
const { run, runOnce, runMigrations, makeWorkerUtils } = require("graphile-worker");

const USAGE =
  "usage: node perf.js migrate <connstr> <schema>\n" +
  "       node perf.js addjobs <connstr> <schema> <jobs> <batch size>\n" +
  "       node perf.js once|run <connstr> <schema> <concurrency> [--batching[=<size>]]\n";

function usage() {
  process.stderr.write(USAGE);
  process.exit(2);
}

const args = process.argv.slice(2);
const isBatching = (a) => a === "--batching" || a.startsWith("--batching=");
const batchingArg = args.find(isBatching);
const batching = batchingArg !== undefined;
const [command, connectionString, schema, concurrencyText] = args.filter((a) => !isBatching(a));
if (!command || !connectionString || !schema) usage();

const latencyFile = process.env.PGWORKER_BENCH_LATENCY_FILE || null;

const taskList = {
  noop: async () => {},
  latency: async (payload) => {
    const now = process.hrtime.bigint();
    if (latencyFile) fs.appendFileSync(latencyFile, `${payload.n} ${now}\n`);
  },
};

function workerOptions() {
  const concurrency = Number(concurrencyText);
  if (!Number.isInteger(concurrency) || concurrency < 1) usage();
  const options = {
    connectionString,
    schema,
    concurrency,
    noHandleSignals: true,
    taskList,
  };
  if (concurrency + 1 > 10) options.maxPoolSize = concurrency + 1;
  if (batching) {
    const size = batchingArg.includes("=") ? Number(batchingArg.split("=")[1]) : concurrency;
    if (!Number.isInteger(size) || size < 1) usage();
    options.preset = {
      worker: {
        localQueue: { size },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      },
    };
  }
  return options;
}

async function main() {
  if (command === "migrate") {
    await runMigrations({ connectionString, schema });
    process.stdout.write(JSON.stringify({ migrated: true, schema }) + "\n");
  } else if (command === "addjobs") {
    const total = Number(concurrencyText);
    const batchSize = Number(args[4]);
    if (!Number.isInteger(total) || !Number.isInteger(batchSize) || batchSize < 1) usage();
    const utils = await makeWorkerUtils({ connectionString, schema, maxPoolSize: 1 });
    try {
      await utils.withPgClient((client) => client.query("select 1"));
      const batches = [];
      for (let start = 0; start < total; start += batchSize) {
        const batch = [];
        for (let n = start; n < Math.min(total, start + batchSize); n++) {
          batch.push({ identifier: "noop", payload: { n } });
        }
        batches.push(batch);
      }
      let added = 0;
      const started = process.hrtime.bigint();
      for (const batch of batches) added += (await utils.addJobs(batch)).length;
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      process.stdout.write(JSON.stringify({ added, seconds }) + "\n");
    } finally {
      await utils.release();
    }
  } else if (command === "once") {
    const options = workerOptions();
    for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(130));
    await runOnce(options);
  } else if (command === "run") {
    const runner = await run(workerOptions());
    let stopping = false;
    for (const signal of ["SIGINT", "SIGTERM"]) {
      process.on(signal, () => {
        if (stopping) process.exit(130);
        stopping = true;
        runner.stop().catch(() => process.exit(1));
      });
    }
    await runner.promise;
  } else {
    usage();
  }
}

main().then(
  () => {
    process.exitCode = 0;
  },
  (err) => {
    process.stderr.write(`error: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
