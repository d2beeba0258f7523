"""An alerting consumer of the detections topic: rules from YAML (a class inside a polygon zone for
at least T seconds; more than K objects), alert events (alerts/v1) published to an alerts topic.

Run it with `rtsp-pipeline alerts --rules FILE`; see `configs/alerts.example.yaml`.
"""
