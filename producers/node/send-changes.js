#!/usr/bin/env node
// Sends stock changes to stocksync's `stocks.submit` task over raw AMQP (amqplib), without Celery.
//
//   node send-changes.js changes.json            # a JSON list of changes, or {"changes": [...]}
//   echo '[{"campaign_id":1001,"sku":"A-100","delta":-2}]' | node send-changes.js -
//
// The broker URL comes from STOCKSYNC_BROKER_URL (default amqp://guest:guest@localhost:5672).
// STOCKSYNC_TASK_ID reuses a task id to send the same message again. Prints the task id once
// RabbitMQ confirmed the message; exits 1 (and says why) when it did not.
// The message is Celery's task message protocol 2, as described in ../README.md.
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const { randomUUID } = require('node:crypto');
const amqp = require('amqplib');

const TASK = 'stocks.submit';
const QUEUE = 'stocks.changes';
const REPR_MAX = 1024; // Celery cuts argsrepr/kwargsrepr (what Flower shows) to this too

/** The body and publish options of one stocks.submit message (Celery protocol 2). */
function taskMessage(changes, taskId = randomUUID()) {
  const kwargs = { changes };
  // [args, kwargs, embed]
  const body = Buffer.from(
    JSON.stringify([[], kwargs, { callbacks: null, errbacks: null, chain: null, chord: null }]),
    'utf8',
  );
  let kwargsrepr = JSON.stringify(kwargs);
  if (kwargsrepr.length > REPR_MAX) kwargsrepr = `${kwargsrepr.slice(0, REPR_MAX - 3)}...`;
  const headers = {
    lang: 'py', // the language of the worker that runs the task, not of the producer
    task: TASK,
    id: taskId,
    root_id: taskId,
    parent_id: null,
    group: null,
    shadow: null,
    eta: null,
    expires: null,
    retries: 0,
    timelimit: [null, null],
    argsrepr: '()',
    kwargsrepr,
    origin: `${process.pid}@${os.hostname()}`,
    ignore_result: false,
  };
  return {
    body,
    options: {
      contentType: 'application/json',
      contentEncoding: 'utf-8',
      correlationId: taskId,
      persistent: true, // delivery_mode 2: the message survives a broker restart
      mandatory: true, // an unroutable message comes back instead of vanishing
      headers,
    },
  };
}

/** Publishes the changes and resolves with the task id once RabbitMQ has confirmed them. */
async function sendChanges(changes, url, taskId) {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createConfirmChannel();
    let returned = null;
    channel.on('return', (message) => {
      returned = message;
    });
    // Declared as the worker declares them (durable direct exchange and queue, both named
    // stocks.changes), so this never conflicts with the worker and may run before it.
    await channel.assertExchange(QUEUE, 'direct', { durable: true });
    await channel.assertQueue(QUEUE, { durable: true });
    await channel.bindQueue(QUEUE, QUEUE, QUEUE);
    const { body, options } = taskMessage(changes, taskId);
    await new Promise((resolve, reject) => {
      channel.publish(QUEUE, QUEUE, body, options, (error) => (error ? reject(error) : resolve()));
    });
    if (returned) throw new Error(`unroutable: ${returned.fields.replyText}`);
    await channel.close();
    return options.headers.id;
  } finally {
    await connection.close();
  }
}

async function main() {
  const source = process.argv[2];
  if (!source) {
    console.error('usage: node send-changes.js FILE|-');
    return 64;
  }
  const text = fs.readFileSync(source === '-' ? 0 : source, 'utf8');
  const loaded = JSON.parse(text);
  const changes = Array.isArray(loaded) ? loaded : loaded.changes;
  const url = process.env.STOCKSYNC_BROKER_URL || 'amqp://guest:guest@localhost:5672';
  try {
    console.log(await sendChanges(changes, url, process.env.STOCKSYNC_TASK_ID || undefined));
    return 0;
  } catch (error) {
    console.error(`not sent: ${error.message}`);
    return 1;
  }
}

if (require.main === module) {
  main().then((code) => {
    process.exitCode = code;
  });
}

module.exports = { taskMessage, sendChanges };
