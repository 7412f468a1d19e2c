"""The gpupool router: the OpenAI API over ZeroMQ to a supervised pool of worker processes."""
