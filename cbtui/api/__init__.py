"""`cbtui api`: an OpenAI-compatible HTTP server in front of the live engine.

Clients' requests join the engine's batch between steps (EngineController.between_steps) and
their tokens come back from the step records, so the dashboard shows them as they join, run and
finish, and pausing or stepping it holds or paces every stream.

    errors.py     the OpenAI-shaped error body
    prompts.py    a completion's prompt or a chat's messages as token ids
    translate.py  a request body checked and turned into one Generation
    hub.py        the bridge: requests into the engine thread, each step's tokens out to each client
    text.py       a client's tokens as text: incremental, cut at stop strings
    routes.py     the Starlette app: endpoints, limits, the API key, streaming
    server.py     uvicorn in a thread beside the dashboard or the headless step log
    dashboard.py  the dashboard, idle (not finished) while no request is left
"""
