# The serin image: the controller, the kubectl plugin and the load tester in one binary.
#   docker build -t serin:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin serin

FROM debian:bookworm-slim
# curl and grep for load tester commands (`--allow-cmd curl --allow-cmd grep`); CA certificates
# for webhooks, alert providers and AWS over TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl grep \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/serin /usr/local/bin/serin
USER 65532:65532
ENTRYPOINT ["serin"]
CMD ["controller"]
