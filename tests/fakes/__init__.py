"""Test-only fakes of the cloud backends the launchers call (GKE, Kubernetes, Cloud Run): the unit and
integration tests and `make bench` start them in-process; the local stack (`make up`) never does. Its
own fakes (the Slack Web API, the scheduler) stay in emulators/."""
