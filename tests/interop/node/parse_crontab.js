#!/usr/bin/env node
"use strict";
// usage: node parse_crontab.js <year>  (requests on stdin, one JSON object a line)
//
// Each request is {"line": "<one crontab line>", "walk": true|false}. For each one,
// prints one JSON line: {"ok": false, "error": "..."} when graphile-worker's own
// parseCrontab refuses the line, else {"ok": true, "items": [...]} where each item has
// task, identifier, options, payload, the parsed sets (minutes, hours, dates, months,
// dows) and "days": one "0"/"1" a day of <year>, whether the item's match function
// accepts that day at its first minute and hour. With "walk", the item also gets
// "walk": its match function called for every minute of <year>, summarised as the
// count, the sum and the first and last 50 matching minutes (minutes since 1 January
// 00:00 UTC).
const { parseCrontab } = require("graphile-worker");
const { emit, parseArgs, parseCount, main } = require("./common");

const [yearText] = parseArgs("parse_crontab.js <year>", 1);
const MINUTE_MS = 60 * 1000;
const DAY_MS = 24 * 60 * MINUTE_MS;

function digest(ms) {
  const ts = new Date(ms);
  return {
    min: ts.getUTCMinutes(),
    hour: ts.getUTCHours(),
    date: ts.getUTCDate(),
    month: ts.getUTCMonth() + 1,
    dow: ts.getUTCDay(),
  };
}

function describe(item, start, end, walk) {
  const sets = item.match.parsedCronMatch;
  const firstOfDay = (sets.hours[0] * 60 + sets.minutes[0]) * MINUTE_MS;
  let days = "";
  for (let day = start; day < end; day += DAY_MS) {
    days += item.match(digest(day + firstOfDay)) ? "1" : "0";
  }
  const described = {
    task: item.task,
    identifier: item.identifier,
    options: item.options,
    payload: item.payload,
    sets,
    days,
  };
  if (walk) {
    const first = [];
    const last = [];
    let count = 0;
    let sum = 0;
    for (let ms = start; ms < end; ms += MINUTE_MS) {
      if (item.match(digest(ms))) {
        const minute = (ms - start) / MINUTE_MS;
        count += 1;
        sum += minute;
        if (first.length < 50) first.push(minute);
        last.push(minute);
        if (last.length > 50) last.shift();
      }
    }
    described.walk = { count, sum, first, last };
  }
  return described;
}

main(async () => {
  const year = parseCount(yearText, "year");
  const start = Date.UTC(year, 0, 1);
  const end = Date.UTC(year + 1, 0, 1);
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const requests = Buffer.concat(chunks).toString("utf8").split("\n").filter((l) => l !== "");
  for (const text of requests) {
    const { line, walk } = JSON.parse(text);
    let items;
    try {
      items = parseCrontab(line);
    } catch (e) {
      emit({ ok: false, error: String(e && e.message ? e.message : e) });
      continue;
    }
    emit({ ok: true, items: items.map((item) => describe(item, start, end, walk)) });
  }
});
