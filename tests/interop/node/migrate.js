#!/usr/bin/env node
"use strict";
// usage: node migrate.js <connstr> <schema>
const { runMigrations } = require("graphile-worker");
const { logger, emit, parseArgs, main } = require("./common");

const [connectionString, schema] = parseArgs("migrate.js <connstr> <schema>", 2);

main(async () => {
  await runMigrations({ connectionString, schema, logger });
  emit({ migrated: true, schema });
});
