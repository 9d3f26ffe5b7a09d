"""HTTP: thin routes, request models, SSE framing and OpenAI's error envelope."""
