"use strict";
// Shared helpers for the interop CLI scripts. stdout is reserved for JSON
// lines; everything graphile-worker logs goes to stderr.
const { Logger } = require("graphile-worker");

const logger = new Logger((scope) => (level, message) => {
  if (level === "debug" && !process.env.INTEROP_DEBUG) return;
  const where = scope.label ? `[${scope.label}] ` : "";
  process.stderr.write(`graphile-worker ${level}: ${where}${message}\n`);
});

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Parse argv after the script path; exit 2 with usage if too few arguments.
function parseArgs(usage, minCount) {
  const args = process.argv.slice(2);
  if (args.length < minCount) {
    process.stderr.write(`usage: ${usage}\n`);
    process.exit(2);
  }
  return args;
}

function parseCount(text, what) {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${what} must be a non-negative integer, got ${JSON.stringify(text)}`);
  return n;
}

// Worker concurrency: 4 unless INTEROP_CONCURRENCY says otherwise.
const concurrency = parseCount(process.env.INTEROP_CONCURRENCY || "4", "INTEROP_CONCURRENCY");

// A task that reports each job it executes as one JSON line.
function makeTaskList(identifiers) {
  const taskList = {};
  for (const identifier of identifiers) {
    taskList[identifier] = async (payload, helpers) => {
      // A payload with sleep_ms makes a long job: it says when it starts, then sleeps.
      const sleepMs = payload && payload.sleep_ms;
      if (sleepMs) {
        emit({ task: identifier, event: "start", job_id: String(helpers.job.id) });
        await new Promise((resolve) => setTimeout(resolve, sleepMs));
      }
      emit({ task: identifier, payload, job_id: String(helpers.job.id) });
    };
  }
  return taskList;
}

// Run main(); on failure print the error to stderr and exit non-zero.
function main(fn) {
  fn().then(
    () => {
      process.exitCode = 0;
    },
    (err) => {
      process.stderr.write(`error: ${err && err.stack ? err.stack : err}\n`);
      process.exit(1);
    },
  );
}

module.exports = { logger, emit, parseArgs, parseCount, concurrency, makeTaskList, main };
