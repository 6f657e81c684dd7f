//! Metrics providers: Prometheus, CloudWatch and direct pod scrape.
