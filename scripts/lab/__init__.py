"""The lab: real local services for tests, the demo and benchmarks (RTSP servers and misbehaving cameras,
the Kafka-protocol broker, the daemon as a process, network and disk faults, Docker), the scene
generators with their ground truth, and the scoring of detections and tracks against it."""
