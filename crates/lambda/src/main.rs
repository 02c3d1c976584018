//! `bootstrap`: the loader Lambda on `provided.al2023`.
//!
//! `bootstrap --init-only` runs the cold start (mappings, clients) and prints how long it took,
//! for the cold-start benchmark.

use std::time::{Duration, Instant};

use ferry_core::event::{SqsBatchResponse, SqsEvent};
use ferry_lambda::Loader;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let started = Instant::now();
    let json_logs =
        std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL").ok();
    let filter = tracing_subscriber::EnvFilter::new(ferry_lambda::log_filter(level.as_deref()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time();
    if json_logs {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    if std::env::var("FERRY_FUNCTION").is_ok_and(|f| f == "reconcile") {
        return reconcile(started).await;
    }
    let loader = match Loader::from_env().await {
        Ok(l) => l,
        Err(e) => {
            // Fails the init phase: the deployment is broken, not one message.
            tracing::error!(error = %e, "cold start failed");
            return Err(e.into());
        }
    };
    let init = started.elapsed();
    tracing::info!(
        init_ms = init.as_secs_f64() * 1000.0,
        tables = loader.pipeline.catalog.table_count(),
        "ready"
    );
    if std::env::args().any(|a| a == "--init-only") {
        println!("init_us {}", init.as_micros());
        return Ok(());
    }
    let loader = &loader;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let remaining = event
            .context
            .deadline()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let report = loader.handle(event.payload, Some(remaining)).await?;
        Ok::<SqsBatchResponse, Error>(report.response)
    }))
    .await
}

/// The scheduled reconcile function (`FERRY_FUNCTION=reconcile`, see `ferry_lambda::integrity`).
async fn reconcile(started: Instant) -> Result<(), Error> {
    let reconciler = match ferry_lambda::integrity::Reconciler::from_env().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cold start failed");
            return Err(e.into());
        }
    };
    tracing::info!(init_ms = started.elapsed().as_secs_f64() * 1000.0, "ready");
    if std::env::args().any(|a| a == "--init-only") {
        return Ok(());
    }
    let reconciler = &reconciler;
    lambda_runtime::run(service_fn(
        move |_: LambdaEvent<serde_json::Value>| async move {
            Ok::<serde_json::Value, Error>(reconciler.run_once().await)
        },
    ))
    .await
}
