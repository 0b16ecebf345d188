"""tinyhelen.llm: talking to a chat model over HTTP, for every part of the project that needs one.

The simplification pipeline (simplify/) and the instruction judge use the same pieces:

    from tinyhelen.llm import MODEL_ALIAS, AnswerCache, ChatClient, LocalServer, cache_key

    with LocalServer() as server:                      # the embedded llama.cpp SmolLM2-135M, on loopback
        client = ChatClient(server.base_url, MODEL_ALIAS)
        answer = client.complete([{"role": "user", "content": "Say hi."}], temperature=0.0, max_tokens=20)

or point ChatClient at any OpenAI-compatible endpoint instead:
`ChatClient("https://api.openai.com/v1", "gpt-4o-mini")`. The API key comes from the environment
only ($TINYHELEN_API_KEY, then $OPENAI_API_KEY, or the variable named by key_env) and is never
printed, logged or written: not in repr(), log lines, exception messages, the cache or outputs.

- client.py   ChatClient: retries 429/5xx/dropped/cut-off answers with backoff; a refused request
              (400/401/403/404) raises FatalClientError at once, an exhausted one ClientError.
- serve.py    LocalServer (start/stop llama.cpp's server; a context manager), find_model, free_port.
- cache.py    AnswerCache: answers stored under cache_key(...) of everything that produced them,
              written atomically, so an interrupted run pays for no answer twice.
- faults.py   FaultServer: a scripted, fault-injecting fake endpoint on loopback for tests.
"""

from tinyhelen.llm.cache import AnswerCache, cache_key
from tinyhelen.llm.client import ChatClient, ClientError, FatalClientError
from tinyhelen.llm.serve import MODEL_ALIAS, LocalServer, ServerError, find_model, free_port

__all__ = ["AnswerCache", "cache_key", "ChatClient", "ClientError", "FatalClientError", "MODEL_ALIAS",
           "LocalServer", "ServerError", "find_model", "free_port"]
