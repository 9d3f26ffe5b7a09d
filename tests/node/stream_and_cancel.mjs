// Drives assistd with the official OpenAI Node SDK: one streamed run to completion, one
// streamed run cancelled mid-stream. Prints ONE JSON line on stdout:
//
//   {"sdk_version": ..., "fast": {"text", "events", "status"},
//    "slow": {"cancel_status", "events", "final_status", "message_status",
//             "incomplete_reason", "partial_text", ...}}
//
// Usage: ASSISTD_BASE_URL=http://127.0.0.1:8000/v1 node stream_and_cancel.mjs
// Exits non-zero (the error on stderr) on any failure, and after NODE_SDK_TIMEOUT_MS
// (default 60000) whatever happens. Pinned SDK: openai 6.49.0, where
// `runs.cancel(runId, {thread_id})` and `runs.retrieve(runId, {thread_id})`.

import OpenAI from 'openai';
import { VERSION } from 'openai/version';

const TIMEOUT_MS = Number(process.env.NODE_SDK_TIMEOUT_MS || 60000);
const CANCEL_AFTER_DELTAS = 3;

// Failure unless main() gets to the end: a promise that never settles must not exit 0.
process.exitCode = 1;

const watchdog = setTimeout(() => {
  console.error(`stream_and_cancel: gave up after ${TIMEOUT_MS} ms`);
  process.exit(2);
}, TIMEOUT_MS);
watchdog.unref();

function fail(error) {
  console.error('stream_and_cancel: ' + (error && error.stack ? error.stack : String(error)));
  if (error && error.status !== undefined) console.error(`HTTP status ${error.status}`, JSON.stringify(error.error ?? null));
  if (error && error.cause) console.error('caused by: ' + (error.cause.stack || String(error.cause)));
  process.exit(1);
}
process.on('unhandledRejection', fail);
process.on('uncaughtException', fail);

async function fast(client, assistantId) {
  const thread = await client.beta.threads.create({
    messages: [{ role: 'user', content: 'NODE-FAST: please say hello' }],
  });
  const events = [];
  let text = '';
  const stream = client.beta.threads.runs.stream(thread.id, { assistant_id: assistantId });
  stream.on('event', (event) => events.push(event.event));
  stream.on('textDelta', (delta) => {
    text += delta.value ?? '';
  });
  const run = await stream.finalRun();
  await stream.done();
  // The SDK's own accumulated snapshot of the message (message.created + the deltas): it
  // equals `text` only if the message.created event carried the message as it was then.
  const snapshots = await stream.finalMessages();
  const snapshotText = snapshots
    .flatMap((m) => m.content.filter((c) => c.type === 'text').map((c) => c.text.value))
    .join('');
  return { thread_id: thread.id, run_id: run.id, text, events, status: run.status, snapshot_text: snapshotText };
}

async function slow(client, assistantId) {
  const thread = await client.beta.threads.create({
    messages: [{ role: 'user', content: 'NODE-SLOW: talk for a long time' }],
  });
  const events = [];
  let streamed = '';
  let deltas = 0;
  let runId = null;
  let cancelling = null; // Promise<{run} | {error}>: settled either way, awaited below
  let streamedAtCancel = null;

  const stream = client.beta.threads.runs.stream(thread.id, { assistant_id: assistantId });
  stream.on('event', (event) => {
    events.push(event.event);
    if (event.event.startsWith('thread.run.') && !event.event.startsWith('thread.run.step.')) runId = event.data.id;
  });
  stream.on('textDelta', (delta) => {
    streamed += delta.value ?? '';
    deltas += 1;
    if (deltas === CANCEL_AFTER_DELTAS && cancelling === null) {
      const id = runId ?? stream.currentRun()?.id;
      streamedAtCancel = streamed;
      cancelling = client.beta.threads.runs
        .cancel(id, { thread_id: thread.id })
        .then((run) => ({ run }), (error) => ({ error }));
    }
  });

  // Keep reading to the end of the stream: it must end by itself after the cancel.
  const finalRun = await stream.finalRun();
  await stream.done();
  if (cancelling === null) throw new Error(`the stream ended after ${deltas} text deltas, before the cancel`);
  const answer = await cancelling;
  if (answer.error) throw answer.error;

  const run = await client.beta.threads.runs.retrieve(answer.run.id, { thread_id: thread.id });
  const page = await client.beta.threads.messages.list(thread.id, { order: 'desc', limit: 20 });
  const message = page.data.find((m) => m.role === 'assistant' && m.run_id === run.id) ?? null;
  const partial = message
    ? message.content.filter((c) => c.type === 'text').map((c) => c.text.value).join('')
    : null;

  return {
    thread_id: thread.id,
    run_id: run.id,
    cancel_status: answer.run.status,
    events,
    stream_final_status: finalRun.status,
    final_status: run.status,
    cancelled_at: run.cancelled_at ?? null,
    message_status: message ? message.status : null,
    incomplete_reason: message?.incomplete_details?.reason ?? null,
    partial_text: partial,
    streamed_text: streamed,
    streamed_text_at_cancel: streamedAtCancel,
    text_deltas: deltas,
  };
}

async function main() {
  const baseURL = process.env.ASSISTD_BASE_URL;
  if (!baseURL) throw new Error('ASSISTD_BASE_URL is not set (e.g. http://127.0.0.1:8000/v1)');
  const client = new OpenAI({
    baseURL,
    apiKey: process.env.ASSISTD_API_KEY || 'test',
    maxRetries: 0,
    timeout: 30000,
  });
  const assistant = await client.beta.assistants.create({
    model: process.env.ASSISTD_TEST_MODEL || 'fake-model',
    name: 'node-sdk',
    instructions: 'You are a test assistant.',
  });
  const result = {
    sdk_version: VERSION,
    fast: await fast(client, assistant.id),
    slow: await slow(client, assistant.id),
  };
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().then(() => {
  clearTimeout(watchdog);
  process.exitCode = 0;
}, fail);
