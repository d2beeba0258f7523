"""RTSP video analytics: cameras -> decode -> batch -> YOLO -> Kafka.

Stages in data-flow order: s1_source, s2_decode, s3_batch, s4_infer, s5_postprocess, s6_publish;
`app.Runtime` wires them, `cli` is the command line.
"""
__version__ = "0.1.0"
