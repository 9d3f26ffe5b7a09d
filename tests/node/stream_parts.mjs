// Streams one run with the official Node SDK's AssistantStream, as a rendering client does
// (openai-assistants-quickstart listens to textDelta and imageFileDone), then retrieves the
// run's message. Prints ONE JSON line on stdout:
//
//   {"events": [...], "images": [file ids from imageFileDone],
//    "text_deltas": [{"value", "annotations", "length"}],   // length: snapshot text after it
//    "built": <the messages AssistantStream built from the deltas>, "retrieved": <messages.retrieve>}
//
// Usage: ASSISTD_BASE_URL=… THREAD_ID=… ASSISTANT_ID=… node stream_parts.mjs
// Exits non-zero (the error on stderr) on failure, and after NODE_SDK_TIMEOUT_MS (default 60000).

import OpenAI from 'openai';

const TIMEOUT_MS = Number(process.env.NODE_SDK_TIMEOUT_MS || 60000);
process.exitCode = 1;

const watchdog = setTimeout(() => {
  console.error(`stream_parts: gave up after ${TIMEOUT_MS} ms`);
  process.exit(2);
}, TIMEOUT_MS);
watchdog.unref();

function fail(error) {
  console.error('stream_parts: ' + (error && error.stack ? error.stack : String(error)));
  process.exit(1);
}
process.on('unhandledRejection', fail);
process.on('uncaughtException', fail);

async function main() {
  const client = new OpenAI({
    baseURL: process.env.ASSISTD_BASE_URL,
    apiKey: process.env.ASSISTD_API_KEY || 'test',
    maxRetries: 0,
    timeout: 30000,
  });
  const threadId = process.env.THREAD_ID;
  const events = [];
  const images = [];
  const textDeltas = [];
  const stream = client.beta.threads.runs.stream(threadId, { assistant_id: process.env.ASSISTANT_ID });
  stream.on('event', (event) => events.push(event.event));
  stream.on('imageFileDone', (imageFile) => images.push(imageFile.file_id));
  stream.on('textDelta', (delta, snapshot) => {
    // Copies: the SDK keeps mutating what it handed out.
    textDeltas.push({
      value: delta.value ?? '',
      annotations: JSON.parse(JSON.stringify(delta.annotations ?? [])),
      length: snapshot.value.length,
    });
  });
  await stream.finalRun();
  const built = JSON.parse(JSON.stringify(await stream.finalMessages()));
  const retrieved = await Promise.all(
    built.map((message) => client.beta.threads.messages.retrieve(message.id, { thread_id: threadId })),
  );
  process.stdout.write(JSON.stringify({ events, images, text_deltas: textDeltas, built, retrieved }) + '\n');
}

main().then(() => {
  clearTimeout(watchdog);
  process.exitCode = 0;
}, fail);
