"""The local Google Cloud stack: real emulators, functions-framework per function, push subscriptions."""
