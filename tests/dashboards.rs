//! The Grafana dashboard (`contrib/grafana/tower-redis-cache.json`) against the metrics the
//! layer documents (the table in `src/telemetry/mod.rs`, read here at build time): a renamed metric
//! or label, or a new metric without a panel, fails here rather than in someone's Grafana.
//!
//! Pure parsing: no network, no Prometheus, no Grafana.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

const TELEMETRY: &str = include_str!("../src/telemetry/mod.rs");
const DASHBOARD: &str = include_str!("../contrib/grafana/tower-redis-cache.json");
const PREFIX: &str = "tower_redis_cache_";
/// The series a Prometheus histogram is exported as.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// A metric of the table in `src/telemetry/mod.rs`.
#[derive(Debug)]
struct Documented {
    kind: String,
    labels: BTreeSet<String>,
}

/// `| `name` | type | `label`, `label` | what |` rows of the module docs.
fn documented_metrics() -> BTreeMap<String, Documented> {
    let mut metrics = BTreeMap::new();
    for line in TELEMETRY.lines() {
        let Some(row) = line.strip_prefix("//! |") else { continue };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[0].trim_matches('`');
        if !name.starts_with(PREFIX) || cells.len() < 4 {
            continue;
        }
        let labels = cells[2].split(',').map(|l| l.trim().trim_matches('`').to_owned());
        let documented = Documented {
            kind: cells[1].to_owned(),
            labels: labels.filter(|l| !l.is_empty()).collect(),
        };
        metrics.insert(name.to_owned(), documented);
    }
    assert!(
        metrics.len() >= 10 && metrics.contains_key("tower_redis_cache_requests_total"),
        "the metrics table of src/telemetry/mod.rs did not parse: {metrics:?}"
    );
    metrics
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL query: the panels' targets and the template variables' queries, with where
/// each comes from.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
            }
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push((format!("variable {:?}", variable["name"]), query.to_owned()));
        }
    }
    queries
}

/// A metric named in a query: the series name as written, and the label names of its selector.
#[derive(Debug)]
struct Selector {
    series: String,
    labels: Vec<String>,
}

/// The `tower_redis_cache_*` series a query names, each with the labels its `{...}` matches on.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut selectors = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let series = tail[..end].to_owned();
        let mut labels = Vec::new();
        if let Some(matchers) = tail[end..].strip_prefix('{') {
            let close = matchers.find('}').expect("an unclosed label selector");
            for matcher in matchers[..close].split(',').filter(|m| !m.trim().is_empty()) {
                let name = matcher.split(['=', '!']).next().unwrap_or_default();
                labels.push(name.trim().to_owned());
            }
        }
        selectors.push(Selector { series, labels });
        rest = &tail[end..];
    }
    selectors
}

/// The labels of `by (...)` and `without (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for keyword in ["by", "without"] {
        let mut rest = expr;
        while let Some(at) = rest.find(&format!("{keyword} (")) {
            let inside = &rest[at + keyword.len() + 2..];
            let close = inside.find(')').expect("an unclosed grouping");
            labels.extend(inside[..close].split(',').map(|l| l.trim().to_owned()));
            rest = &inside[close..];
        }
    }
    labels
}

/// The documented metric a series belongs to (`x_bucket` belongs to the histogram `x`).
fn metric_of<'a>(
    series: &str,
    documented: &'a BTreeMap<String, Documented>,
) -> Option<(&'a str, &'a Documented)> {
    if let Some((name, metric)) = documented.get_key_value(series) {
        return Some((name, metric));
    }
    HISTOGRAM_SUFFIXES.iter().find_map(|suffix| {
        let (name, metric) = documented.get_key_value(series.strip_suffix(suffix)?)?;
        (metric.kind == "histogram").then_some((name.as_str(), metric))
    })
}

#[test]
fn every_query_names_only_documented_metrics() {
    let documented = documented_metrics();
    let queries = queries(&dashboard());
    assert!(queries.len() >= 10, "too few queries found: {queries:?}");
    for (source, expr) in &queries {
        let selectors = selectors(expr);
        assert!(!selectors.is_empty(), "{source} names no {PREFIX}* metric: {expr}");
        for selector in selectors {
            assert!(
                metric_of(&selector.series, &documented).is_some(),
                "{source} names `{}`, which src/telemetry/mod.rs does not document (histograms may \
                 add {HISTOGRAM_SUFFIXES:?}): {expr}",
                selector.series
            );
        }
    }
}

#[test]
fn every_query_uses_only_the_labels_its_metrics_have() {
    let documented = documented_metrics();
    for (source, expr) in queries(&dashboard()) {
        let mut in_scope = BTreeSet::new();
        for selector in selectors(&expr) {
            // Unknown metrics are every_query_names_only_documented_metrics's to report.
            let Some((name, metric)) = metric_of(&selector.series, &documented) else { continue };
            let bucket = selector.series.ends_with("_bucket");
            for label in &selector.labels {
                assert!(
                    metric.labels.contains(label) || (bucket && label == "le"),
                    "{source}: `{name}` has no label `{label}` (it has {:?}): {expr}",
                    metric.labels
                );
            }
            in_scope.extend(metric.labels.iter().cloned());
            if bucket {
                in_scope.insert("le".to_owned());
            }
        }
        for label in grouping_labels(&expr) {
            assert!(
                in_scope.contains(&label),
                "{source} groups by `{label}`, which none of its metrics has: {expr}"
            );
        }
    }
}

#[test]
fn quantiles_come_from_buckets_and_rates_from_counters() {
    let documented = documented_metrics();
    for (source, expr) in queries(&dashboard()) {
        for selector in selectors(&expr) {
            // Unknown metrics are every_query_names_only_documented_metrics's to report.
            let Some((name, metric)) = metric_of(&selector.series, &documented) else { continue };
            if metric.kind == "histogram" {
                // The exporter renders a histogram without buckets as a summary, which
                // `histogram_quantile` cannot read: the dashboard relies on `_bucket`.
                assert!(
                    selector.series.ends_with("_bucket") && expr.contains("histogram_quantile("),
                    "{source} reads the histogram `{name}` other than through \
                     histogram_quantile over `_bucket`: {expr}"
                );
            }
            if metric.kind == "counter" && !source.starts_with("variable") {
                assert!(
                    expr.contains("rate(") || expr.contains("increase("),
                    "{source} shows the counter `{name}` without rate or increase: {expr}"
                );
            }
        }
    }
}

#[test]
fn every_documented_metric_has_a_panel() {
    let documented = documented_metrics();
    let shown: BTreeSet<&str> = queries(&dashboard())
        .iter()
        .flat_map(|(_, expr)| selectors(expr))
        .filter_map(|selector| metric_of(&selector.series, &documented).map(|(name, _)| name))
        .collect();
    let missing: Vec<&String> =
        documented.keys().filter(|name| !shown.contains(name.as_str())).collect();
    assert!(
        missing.is_empty(),
        "metrics documented in src/telemetry/mod.rs with no panel: {missing:?}"
    );
}

#[test]
fn the_dashboard_imports_with_a_prometheus_datasource_and_a_route_variable() {
    let dashboard = dashboard();
    let input = &dashboard["__inputs"][0];
    assert_eq!(input["name"], "DS_PROMETHEUS");
    assert_eq!(input["pluginId"], "prometheus");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36, "not a Grafana 10+ dashboard");

    let datasource = serde_json::json!({ "type": "prometheus", "uid": "${DS_PROMETHEUS}" });
    let panels = panels(&dashboard);
    let mut ids = BTreeSet::new();
    for panel in &panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "two panels with id {}", panel["id"]);
        assert_eq!(panel["datasource"], datasource, "panel {}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"], datasource, "panel {}", panel["title"]);
        }
    }

    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let route = variables.iter().find(|v| v["name"] == "route").expect("a `route` variable");
    assert_eq!(route["query"]["query"], "label_values(tower_redis_cache_requests_total, route)");
    assert_eq!(route["datasource"], datasource);
    // Every route-labelled panel filters on it.
    let documented = documented_metrics();
    for (source, expr) in queries(&dashboard) {
        for selector in selectors(&expr) {
            // Unknown metrics are every_query_names_only_documented_metrics's to report.
            let Some((name, metric)) = metric_of(&selector.series, &documented) else { continue };
            if metric.labels.contains("route") && source.starts_with("panel") {
                assert!(
                    selector.labels.iter().any(|l| l == "route"),
                    "{source}: `{name}` is not filtered by $route: {expr}"
                );
            }
        }
    }
}
