"""aiokafka's security arguments from the configured protocol, TLS and SASL settings: one place for
every Kafka client of the daemon (the publisher, the placement member, the `placement` command,
the alerting consumer)."""
from __future__ import annotations

from pipeline.config import KafkaConfig


def security_options(config: KafkaConfig) -> dict:
    """aiokafka's security arguments for the configured protocol, TLS and SASL settings."""
    options: dict = {"security_protocol": config.security_protocol}
    if config.security_protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        tls = config.tls
        context = create_ssl_context(
            cafile=tls.cafile if tls else None, certfile=tls.certfile if tls else None,
            keyfile=tls.keyfile if tls else None,
        )
        context.check_hostname = tls.check_hostname if tls else True
        options["ssl_context"] = context
    if config.sasl is not None:
        options.update(sasl_mechanism=config.sasl.mechanism, sasl_plain_username=config.sasl.username,
                       sasl_plain_password=config.sasl.password)
    return options
