"""The web console (issue 20): server-rendered pages over the API's handlers; charts and view models."""
