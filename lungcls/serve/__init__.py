"""``lungcls-serve``: a web page and a JSON API that run trained checkpoints on uploaded X-rays
(FastAPI on uvicorn). ``app`` builds the application, ``batching`` groups concurrent requests onto
the models, ``limits`` keeps uploads bounded, ``loadtest`` measures a running server on loopback."""
