"""Several nodes, one camera list (`placement.mode: kafka-group`): which node runs which camera.

plan (the leader's plan, pure functions, and the member's wire format) <- group (membership
through Kafka's group coordinator: an aiokafka consumer with our assignor) <- node (this daemon as
a node: applies each assignment through the fleet and shows the group's map).
"""
