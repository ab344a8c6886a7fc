// The TypeScript snippet of the authentication guide, as written but for the base
// URL, run with the official `openai` npm package. tests/gateway_sdk.rs copies this
// file next to target/sdk/node/node_modules and runs it with node.
//
// Reads CROSSMODEL_API_KEY (a working key), GATEWAY_BASE_URL (…/v1) and
// GATEWAY_REVOKED_KEY. Exits non-zero on the first failure.
import OpenAI from "openai";

const client = new OpenAI({
  apiKey: process.env.CROSSMODEL_API_KEY,
  baseURL: process.env.GATEWAY_BASE_URL,
});

function check(condition, what) {
  if (!condition) {
    throw new Error(what);
  }
}

const reply = await client.chat.completions.create({
  model: "deepseek/deepseek-v4-pro",
  messages: [{ role: "user", content: "Hello from node" }],
});
check(reply.choices[0].message.content === "Hello from node", JSON.stringify(reply));
console.log("  ok: node openai chat completion");

const refused = new OpenAI({
  apiKey: process.env.GATEWAY_REVOKED_KEY,
  baseURL: process.env.GATEWAY_BASE_URL,
  maxRetries: 0,
});
try {
  await refused.models.list();
  throw new Error("a revoked key was accepted");
} catch (error) {
  check(error instanceof OpenAI.AuthenticationError, `not an AuthenticationError: ${error}`);
  check(error.status === 401, `status ${error.status}`);
  check(error.code === "api_key_inactive", `code ${error.code}`);
  check(error.requestID && error.requestID.startsWith("req_"), `request id ${error.requestID}`);
}
console.log("  ok: node openai revoked key is AuthenticationError api_key_inactive");
