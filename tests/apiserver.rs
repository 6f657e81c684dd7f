//! Tests of the Kubernetes API server and kubelet stand-ins that the end-to-end tests run on:
//! what kube-rs clients, watchers and controllers and kubectl see when they talk to them.

#[path = "support/apiserver/mod.rs"]
mod apiserver;
#[path = "support/kubelet.rs"]
mod kubelet;

use std::sync::Arc;
use std::time::Duration;

use apiserver::{ApiServer, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use kubelet::{Kubelet, Pods};
use serde_json::{Value, json};
use serin::api::Canary;

const WAIT: Duration = Duration::from_secs(10);

fn deployment(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "test", "labels": {"app": name}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": image,
                    "ports": [{"name": "http", "containerPort": 9898}],
                    "env": [{"name": "A", "value": "1"}],
                }]},
            },
        },
    })
}

fn canary(name: &str) -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1",
        "kind": "Canary",
        "metadata": {"name": name, "namespace": "test"},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "service": {"port": 9898},
        },
    })
}

fn configmap(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"},
    }))
    .unwrap()
}

async fn server() -> ApiServer {
    let api = ApiServer::start().await;
    api.create_namespace("test");
    api
}

fn api_error(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn canary_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serin.dev", "v1beta1", "Canary"),
        "canaries",
    )
}

/// Waits for the next item of `stream` that `pred` accepts.
async fn next_matching<S, T>(stream: &mut S, what: &str, pred: impl Fn(&T) -> bool) -> T
where
    S: futures::Stream<Item = T> + Unpin,
    T: std::fmt::Debug,
{
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(item) if pred(&item) => return item,
                Some(_) => {}
                None => panic!("stream ended while waiting for {what}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn crud_through_kube_rs_sets_server_fields_and_reports_kube_reasons() {
    let api = server().await;
    let deploys: Api<Deployment> = Api::namespaced(api.client(), "test");
    let d: Deployment = serde_json::from_value(deployment("podinfo", "podinfo:6.0.0")).unwrap();

    let created = deploys.create(&PostParams::default(), &d).await.unwrap();
    let meta = &created.metadata;
    assert!(
        meta.uid.as_deref().is_some_and(|u| u.len() == 36),
        "uid: {:?}",
        meta.uid
    );
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
    assert_eq!(rv, api.resource_version());
    // Defaults the real server fills in, which a controller reads back.
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    assert_eq!(spec.revision_history_limit, Some(10));
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        container.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP")
    );

    let again = api_error(
        deploys
            .create(&PostParams::default(), &d)
            .await
            .unwrap_err(),
    );
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert!(again.is_already_exists());

    let got = deploys.get("podinfo").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert!(
        deploys.get_opt("missing").await.unwrap().is_none(),
        "404 maps to None"
    );
    let missing = api_error(deploys.get("missing").await.unwrap_err());
    assert_eq!(missing.message, r#"deployments.apps "missing" not found"#);

    let mut changed = got.clone();
    changed.spec.as_mut().unwrap().replicas = Some(3);
    let replaced = deploys
        .replace("podinfo", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().replicas, Some(3));
    assert_eq!(replaced.metadata.generation, Some(2));

    let list = deploys.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.metadata.resource_version,
        replaced.metadata.resource_version
    );

    deploys
        .delete("podinfo", &DeleteParams::default())
        .await
        .unwrap();
    assert!(deploys.get_opt("podinfo").await.unwrap().is_none());
    assert!(
        api.get("apps/v1", "Deployment", "test", "podinfo")
            .is_none()
    );
}

#[tokio::test]
async fn writes_to_a_missing_namespace_or_with_bad_fields_are_rejected_like_the_real_server() {
    let api = server().await;
    let client = api.client();

    let elsewhere: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    let err = api_error(
        elsewhere
            .create(&PostParams::default(), &configmap("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.code, err.message.as_str()),
        (404, r#"namespaces "nowhere" not found"#)
    );

    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "test");
    let mut bad = deployment("podinfo", "podinfo:1");
    bad["spec"]["selector"]["matchLabels"]["app"] = json!("other");
    let d: Deployment = serde_json::from_value(bad).unwrap();
    let err = api_error(
        deploys
            .create(&PostParams::default(), &d)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message.contains("spec.template.metadata.labels"),
        "{}",
        err.message
    );

    let good: Deployment = serde_json::from_value(deployment("podinfo", "podinfo:1")).unwrap();
    deploys.create(&PostParams::default(), &good).await.unwrap();
    let selector = json!({"spec": {"selector": {"matchLabels": {"app": "podinfo", "x": "y"}},
        "template": {"metadata": {"labels": {"app": "podinfo", "x": "y"}}}}});
    let err = api_error(
        deploys
            .patch("podinfo", &PatchParams::default(), &Patch::Merge(&selector))
            .await
            .unwrap_err(),
    );
    assert!(
        err.message.contains("spec.selector") && err.message.contains("immutable"),
        "{}",
        err.message
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "test");
    let err = api_error(
        cms.create(&PostParams::default(), &configmap("Upper_Case", json!({})))
            .await
            .unwrap_err(),
    );
    assert!(err.message.contains("metadata.name"), "{}", err.message);
    let err = api_error(
        cms.create(
            &PostParams::default(),
            &configmap("a", json!({"bad value": "x"})),
        )
        .await
        .unwrap_err(),
    );
    assert!(err.message.contains("metadata.labels"), "{}", err.message);

    let canaries: Api<DynamicObject> = Api::namespaced_with(client, "test", &canary_resource());
    let c: DynamicObject = serde_json::from_value(canary("podinfo")).unwrap();
    canaries.create(&PostParams::default(), &c).await.unwrap();
    let err = api_error(
        canaries
            .patch(
                "podinfo",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"suspend": true}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.code, 415,
        "custom resources take no strategic merge patch: {}",
        err.message
    );
}

#[tokio::test]
async fn server_side_apply_creates_when_absent_then_merges() {
    let api = server().await;
    let canaries: Api<DynamicObject> =
        Api::namespaced_with(api.client(), "test", &canary_resource());
    let ssa = PatchParams::apply("serin").force();

    let first = canaries
        .patch("podinfo", &ssa, &Patch::Apply(canary("podinfo")))
        .await
        .unwrap();
    assert_eq!(first.metadata.generation, Some(1));
    let applied = api.requests_for("patch", "canaries");
    assert_eq!(applied.len(), 1);
    assert_eq!(
        applied[0].status, 201,
        "apply of an absent object creates it"
    );
    assert_eq!(applied[0].content_type, "application/apply-patch+yaml");
    assert_eq!(applied[0].param("fieldManager").as_deref(), Some("serin"));

    let mut more = canary("podinfo");
    more["spec"] = json!({"skipAnalysis": true});
    more["metadata"]["labels"] = json!({"team": "a"});
    let merged = canaries
        .patch("podinfo", &ssa, &Patch::Apply(&more))
        .await
        .unwrap();
    assert_eq!(merged.data["spec"]["skipAnalysis"], json!(true));
    assert_eq!(
        merged.data["spec"]["service"]["port"],
        json!(9898),
        "fields not applied are kept"
    );
    assert_eq!(merged.labels().get("team").map(String::as_str), Some("a"));
    assert_eq!(merged.metadata.generation, Some(2));

    let rv = merged.resource_version();
    let same = canaries
        .patch("podinfo", &ssa, &Patch::Apply(&more))
        .await
        .unwrap();
    assert_eq!(
        same.resource_version(),
        rv,
        "an apply that changes nothing writes nothing"
    );
}

#[tokio::test]
async fn a_stale_resource_version_gets_409_conflict() {
    let api = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "test");
    let cm = cms
        .create(&PostParams::default(), &configmap("c", json!({})))
        .await
        .unwrap();

    let mut fresh = cm.clone();
    fresh.data = Some([("k".to_string(), "new".to_string())].into());
    cms.replace("c", &PostParams::default(), &fresh)
        .await
        .unwrap();

    let mut stale = cm.clone();
    stale.data = Some([("k".to_string(), "lost".to_string())].into());
    let err = api_error(
        cms.replace("c", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.contains("the object has been modified"),
        "{}",
        err.message
    );

    let stale_patch =
        json!({"metadata": {"resourceVersion": cm.resource_version()}, "data": {"k": "lost"}});
    let err = api_error(
        cms.patch("c", &PatchParams::default(), &Patch::Merge(&stale_patch))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    assert_eq!(cms.get("c").await.unwrap().data.unwrap()["k"], "new");

    let canaries: Api<DynamicObject> =
        Api::namespaced_with(api.client(), "test", &canary_resource());
    canaries
        .create(
            &PostParams::default(),
            &serde_json::from_value(canary("p")).unwrap(),
        )
        .await
        .unwrap();
    let mut no_rv: DynamicObject = serde_json::from_value(canary("p")).unwrap();
    no_rv.data["spec"]["suspend"] = json!(true);
    let err = api_error(
        canaries
            .replace("p", &PostParams::default(), &no_rv)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.code, 422,
        "custom resources need a resourceVersion to update: {}",
        err.message
    );
}

#[tokio::test]
async fn status_is_a_separate_subresource_and_generation_follows_spec_only() {
    let api = server().await;
    let canaries: Api<Canary> = Api::namespaced(api.client(), "test");
    let mut with_status = canary("podinfo");
    with_status["status"] = json!({"phase": "Succeeded"});
    let c: Canary = serde_json::from_value(with_status).unwrap();
    let created = canaries.create(&PostParams::default(), &c).await.unwrap();
    assert!(created.status.is_none(), "create ignores status");
    assert_eq!(created.metadata.generation, Some(1));

    let status = json!({"status": {"phase": "Progressing", "canaryWeight": 10}});
    let after = canaries
        .patch_status("podinfo", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(after.status.as_ref().unwrap().canary_weight, 10);
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes keep generation"
    );

    let main = json!({"spec": {"skipAnalysis": true}, "status": {"canaryWeight": 50}});
    let after = canaries
        .patch("podinfo", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().canary_weight,
        10,
        "main writes keep status"
    );
    assert_eq!(after.spec.skip_analysis, Some(true));
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );

    let spec_via_status = json!({"spec": {"skipAnalysis": false}, "status": {"canaryWeight": 20}});
    let after = canaries
        .patch_status(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(&spec_via_status),
        )
        .await
        .unwrap();
    assert_eq!(
        after.spec.skip_analysis,
        Some(true),
        "status writes keep spec"
    );
    assert_eq!(after.status.as_ref().unwrap().canary_weight, 20);

    let labels = json!({"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}}});
    let after = canaries
        .patch("podinfo", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "metadata changes keep generation"
    );

    let mut replaced = canaries.get_status("podinfo").await.unwrap();
    replaced.status.as_mut().unwrap().canary_weight = 30;
    let after = canaries
        .replace_status("podinfo", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(after.status.unwrap().canary_weight, 30);
    let status_writes = api.requests_for("update", "canaries/status");
    assert_eq!(status_writes.len(), 1);
    assert_eq!(status_writes[0].status, 200);
}

#[tokio::test]
async fn deployment_scale_subresource_reads_and_writes_spec_replicas() {
    let api = server().await;
    api.put(deployment("podinfo", "podinfo:1"));
    let deploys: Api<Deployment> = Api::namespaced(api.client(), "test");
    let scale = deploys.get_scale("podinfo").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    assert_eq!(
        scale.status.unwrap().selector.as_deref(),
        Some("app=podinfo")
    );
    let patch = json!({"spec": {"replicas": 0}});
    deploys
        .patch_scale("podinfo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        deploys.get("podinfo").await.unwrap().spec.unwrap().replicas,
        Some(0)
    );
}

#[tokio::test]
async fn strategic_merge_patch_merges_containers_by_name_and_keeps_their_other_fields() {
    let api = server().await;
    let mut d = deployment("podinfo", "podinfo:1");
    d["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sidecar", "image": "envoy:1"}));
    api.put(d);
    let deploys: Api<Deployment> = Api::namespaced(api.client(), "test");
    let image = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
        "containers": [{"name": "app", "image": "podinfo:2"}],
    }}}});
    let after = deploys
        .patch("podinfo", &PatchParams::default(), &Patch::Strategic(image))
        .await
        .unwrap();
    let containers = after.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0].image.as_deref(), Some("podinfo:2"));
    assert_eq!(
        containers[0].ports.as_ref().unwrap()[0].container_port,
        9898,
        "ports kept"
    );
    assert_eq!(containers[0].env.as_ref().unwrap()[0].name, "A", "env kept");
    assert_eq!(containers[1].name, "sidecar");

    let remove = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}});
    let after = deploys
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(remove),
        )
        .await
        .unwrap();
    assert_eq!(
        after.spec.unwrap().template.spec.unwrap().containers.len(),
        1
    );

    // A JSON merge patch, by contrast, replaces the whole list.
    let merge = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "podinfo:3"}]}}}});
    let after = deploys
        .patch("podinfo", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    let containers = after.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(containers[0].image.as_deref(), Some("podinfo:3"));
    assert!(
        containers[0].ports.is_none(),
        "merge patch replaced the container"
    );
}

#[tokio::test]
async fn json_patch_applies_operations_and_fails_on_a_failed_test() {
    let api = server().await;
    let mut vr = json!({
        "apiVersion": "appmesh.k8s.aws/v1beta2",
        "kind": "VirtualRouter",
        "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": {"routes": [{"name": "podinfo", "httpRoute": {"action": {"weightedTargets": [
            {"virtualNodeRef": {"name": "podinfo-primary"}, "weight": 100},
            {"virtualNodeRef": {"name": "podinfo-canary"}, "weight": 0},
        ]}}}]},
    });
    api.put(vr.clone());
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("appmesh.k8s.aws", "v1beta2", "VirtualRouter"),
        "virtualrouters",
    );
    let routers: Api<DynamicObject> = Api::namespaced_with(api.client(), "test", &ar);
    let weights = "/spec/routes/0/httpRoute/action/weightedTargets";
    let ops = json!([
        {"op": "test", "path": format!("{weights}/0/weight"), "value": 100},
        {"op": "replace", "path": format!("{weights}/0/weight"), "value": 90},
        {"op": "replace", "path": format!("{weights}/1/weight"), "value": 10},
    ]);
    let patch = || Patch::Json::<()>(serde_json::from_value(ops.clone()).unwrap());
    let after = routers
        .patch("podinfo", &PatchParams::default(), &patch())
        .await
        .unwrap();
    vr["spec"]["routes"][0]["httpRoute"]["action"]["weightedTargets"][0]["weight"] = json!(90);
    vr["spec"]["routes"][0]["httpRoute"]["action"]["weightedTargets"][1]["weight"] = json!(10);
    assert_eq!(after.data["spec"], vr["spec"]);

    let err = api_error(
        routers
            .patch("podinfo", &PatchParams::default(), &patch())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.code, 422,
        "the test operation fails once the weight is 90: {}",
        err.message
    );
    let stored = api
        .get(
            "appmesh.k8s.aws/v1beta2",
            "VirtualRouter",
            "test",
            "podinfo",
        )
        .unwrap();
    assert_eq!(stored["spec"], vr["spec"], "a failed patch changes nothing");
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let api = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "test");
    for (name, labels) in [
        ("a", json!({"app": "a", "tier": "web"})),
        ("b", json!({"app": "b"})),
        ("c", json!({"app": "c", "tier": "db"})),
    ] {
        cms.create(&PostParams::default(), &configmap(name, labels))
            .await
            .unwrap();
    }
    let names = |sel: &'static str| {
        let cms = cms.clone();
        async move {
            let list = cms.list(&ListParams::default().labels(sel)).await.unwrap();
            list.items
                .iter()
                .map(|c| c.name_any())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    assert_eq!(names("app=a").await, "a");
    assert_eq!(names("app!=a").await, "b,c");
    assert_eq!(names("app in (a,c)").await, "a,c");
    assert_eq!(names("app notin (a,c)").await, "b");
    assert_eq!(names("tier").await, "a,c");
    assert_eq!(names("!tier").await, "b");
    assert_eq!(names("app in (a,b),tier=web").await, "a");
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let all: Api<ConfigMap> = Api::all(api.client());
    let other_ns = all
        .list(&ListParams::default().fields("metadata.namespace!=test"))
        .await
        .unwrap();
    assert!(other_ns.items.is_empty());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        3
    );
}

#[tokio::test]
async fn a_watcher_sees_changes_and_recovers_from_cut_streams_and_410_gone() {
    let api = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "test");
    cms.create(&PostParams::default(), &configmap("before", json!({})))
        .await
        .unwrap();
    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    let named = |name: &'static str| {
        move |e: &Result<watcher::Event<ConfigMap>, watcher::Error>| match e {
            Ok(
                watcher::Event::Apply(c) | watcher::Event::InitApply(c) | watcher::Event::Delete(c),
            ) => c.name_any() == name,
            _ => false,
        }
    };
    let _ = next_matching(&mut events, "initial object", named("before")).await;
    let _ = next_matching(&mut events, "init done", |e| {
        matches!(e, Ok(watcher::Event::InitDone))
    })
    .await;

    cms.create(&PostParams::default(), &configmap("added", json!({})))
        .await
        .unwrap();
    let e = next_matching(&mut events, "ADDED", named("added")).await;
    assert!(matches!(e, Ok(watcher::Event::Apply(_))));
    cms.patch(
        "added",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    let e = next_matching(&mut events, "MODIFIED", named("added")).await;
    let Ok(watcher::Event::Apply(c)) = e else {
        panic!("{e:?}")
    };
    assert_eq!(c.data.unwrap()["k"], "2");
    cms.delete("added", &DeleteParams::default()).await.unwrap();
    let e = next_matching(&mut events, "DELETED", named("added")).await;
    assert!(matches!(e, Ok(watcher::Event::Delete(_))));

    // A cut stream: the watcher resumes from its resourceVersion without listing again.
    let lists = api.requests_for("list", "configmaps").len();
    assert!(api.cut_watches() >= 1);
    cms.create(&PostParams::default(), &configmap("after-cut", json!({})))
        .await
        .unwrap();
    let _ = next_matching(&mut events, "ADDED after a cut", named("after-cut")).await;
    assert_eq!(
        api.requests_for("list", "configmaps").len(),
        lists,
        "resumed, not re-listed"
    );

    // History gone: the resumed watch gets 410, the watcher lists again and carries on.
    api.compact();
    api.cut_watches();
    let _ = next_matching(
        &mut events,
        "410 error",
        |e| matches!(e, Err(watcher::Error::WatchError(s)) if s.code == 410),
    )
    .await;
    cms.create(&PostParams::default(), &configmap("after-410", json!({})))
        .await
        .unwrap();
    let _ = next_matching(&mut events, "ADDED after 410", named("after-410")).await;
    assert!(
        api.requests_for("list", "configmaps").len() > lists,
        "re-listed after 410"
    );
    let watches = api.requests_for("watch", "configmaps");
    assert!(
        watches
            .iter()
            .all(|r| r.param("allowWatchBookmarks").as_deref() == Some("true"))
    );
}

#[tokio::test]
async fn watch_replays_from_a_resource_version_sends_bookmarks_and_honours_timeout() {
    let api = ApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    api.create_namespace("test");
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "test");
    let start = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    for name in ["one", "two"] {
        cms.create(&PostParams::default(), &configmap(name, json!({})))
            .await
            .unwrap();
    }
    cms.delete("one", &DeleteParams::default()).await.unwrap();

    let params = WatchParams::default().timeout(1);
    let stream = cms.watch(&params, &start).await.unwrap();
    let seen: Vec<WatchEvent<ConfigMap>> = tokio::time::timeout(WAIT, stream.try_collect())
        .await
        .unwrap()
        .unwrap();
    let summary: Vec<String> = seen
        .iter()
        .map(|e| match e {
            WatchEvent::Added(c) => format!("ADDED {}", c.name_any()),
            WatchEvent::Modified(c) => format!("MODIFIED {}", c.name_any()),
            WatchEvent::Deleted(c) => format!("DELETED {}", c.name_any()),
            WatchEvent::Bookmark(_) => "BOOKMARK".into(),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        })
        .collect();
    assert_eq!(
        summary[..3],
        ["ADDED one", "ADDED two", "DELETED one"],
        "{summary:?}"
    );
    assert!(
        summary[3..].iter().all(|s| s == "BOOKMARK") && summary.len() > 4,
        "bookmarks, then the stream ended: {summary:?}"
    );
    let WatchEvent::Bookmark(b) = seen.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(
        b.metadata.resource_version,
        api.resource_version().to_string()
    );

    api.compact();
    let stream = cms.watch(&WatchParams::default(), &start).await.unwrap();
    let seen: Vec<WatchEvent<ConfigMap>> = tokio::time::timeout(WAIT, stream.try_collect())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&seen[..], [WatchEvent::Error(e)] if e.code == 410 && e.message.contains("too old resource version")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn streaming_list_watch_ends_its_initial_events_with_a_bookmark() {
    let api = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "test");
    cms.create(&PostParams::default(), &configmap("x", json!({})))
        .await
        .unwrap();
    let mut events = watcher(cms, watcher::Config::default().streaming_lists()).boxed();
    let _ = next_matching(
        &mut events,
        "initial x",
        |e| matches!(e, Ok(watcher::Event::InitApply(c)) if c.name_any() == "x"),
    )
    .await;
    let _ = next_matching(&mut events, "init done", |e| {
        matches!(e, Ok(watcher::Event::InitDone))
    })
    .await;
    let watch = &api.requests_for("watch", "configmaps")[0];
    assert_eq!(watch.param("sendInitialEvents").as_deref(), Some("true"));
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owner_references_collect_dependents() {
    let api = server().await;
    let client = api.client();
    let canaries: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "test", &canary_resource());
    let mut c = canary("podinfo");
    c["metadata"]["finalizers"] = json!(["serin.dev/finalizer"]);
    let owner = canaries
        .create(&PostParams::default(), &serde_json::from_value(c).unwrap())
        .await
        .unwrap();
    let owner_ref = owner.controller_owner_ref(&canary_resource()).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "test");
    let mut dep = configmap("podinfo-primary", json!({}));
    dep.metadata.owner_references = Some(vec![owner_ref.clone()]);
    cms.create(&PostParams::default(), &dep).await.unwrap();
    let mut shared = configmap("shared", json!({}));
    let other = cms
        .create(&PostParams::default(), &configmap("other-owner", json!({})))
        .await
        .unwrap();
    let mut other_ref = owner_ref.clone();
    other_ref.uid = other.uid().unwrap();
    other_ref.controller = None;
    shared.metadata.owner_references = Some(vec![owner_ref.clone(), other_ref]);
    cms.create(&PostParams::default(), &shared).await.unwrap();

    canaries
        .delete("podinfo", &DeleteParams::default())
        .await
        .unwrap();
    let held = canaries.get("podinfo").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "finalizer holds the object"
    );
    assert!(
        cms.get_opt("podinfo-primary").await.unwrap().is_some(),
        "dependents wait for the owner"
    );
    let err = api_error(
        canaries
            .patch(
                "podinfo",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"finalizers": ["serin.dev/finalizer", "another"]}}),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.code, 422,
        "no new finalizers while deleting: {}",
        err.message
    );

    let remove = json!({"metadata": {"finalizers": null}});
    canaries
        .patch("podinfo", &PatchParams::default(), &Patch::Merge(&remove))
        .await
        .unwrap();
    assert!(canaries.get_opt("podinfo").await.unwrap().is_none());
    assert!(
        cms.get_opt("podinfo-primary").await.unwrap().is_none(),
        "garbage-collected"
    );
    let survivor = cms.get("shared").await.unwrap();
    let refs = survivor.metadata.owner_references.unwrap();
    assert_eq!(
        refs.len(),
        1,
        "the reference to the deleted owner is dropped"
    );
    assert_eq!(refs[0].uid, other.uid().unwrap());

    cms.delete("other-owner", &DeleteParams::orphan())
        .await
        .unwrap();
    let orphan = cms.get("shared").await.unwrap();
    assert!(
        orphan.metadata.owner_references.is_none(),
        "orphaned, not deleted"
    );
}

#[tokio::test]
async fn deleting_a_namespace_deletes_what_it_holds() {
    let api = server().await;
    api.put(deployment("podinfo", "podinfo:1"));
    let namespaces: Api<Namespace> = Api::all(api.client());
    namespaces
        .delete("test", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        api.get("apps/v1", "Deployment", "test", "podinfo")
            .is_none()
    );
    assert!(api.get("v1", "Namespace", "", "test").is_none());
}

#[tokio::test]
async fn injected_faults_reach_the_client_with_kubernetes_status_bodies() {
    let api = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "test");
    cms.create(&PostParams::default(), &configmap("c", json!({})))
        .await
        .unwrap();
    api.fail_next("patch", "configmaps", 2, 409);
    api.fail_next("get", "*", 1, 500);
    api.fail_next("list", "configmaps", 2, 429);
    assert_eq!(api.pending_faults(), 5);

    let patch = Patch::Merge(json!({"data": {"k": "2"}}));
    for _ in 0..2 {
        let err = api_error(
            cms.patch("c", &PatchParams::default(), &patch)
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        assert!(
            err.message.contains("the object has been modified"),
            "{}",
            err.message
        );
    }
    cms.patch("c", &PatchParams::default(), &patch)
        .await
        .unwrap();
    let err = api_error(cms.get("c").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    // kube retries 429 on its own (after Retry-After), so the list succeeds.
    assert_eq!(
        cms.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    assert_eq!(cms.get("c").await.unwrap().data.unwrap()["k"], "2");
    assert_eq!(api.pending_faults(), 0);

    let statuses: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.resource == "configmaps")
        .map(|r| r.summary())
        .collect();
    assert_eq!(
        statuses,
        [
            "create configmaps test/ 201",
            "patch configmaps test/c 409",
            "patch configmaps test/c 409",
            "patch configmaps test/c 200",
            "get configmaps test/c 500",
            "list configmaps test/ 429",
            "list configmaps test/ 429",
            "list configmaps test/ 200",
            "get configmaps test/c 200",
        ]
    );
}

#[tokio::test]
async fn discovery_serves_the_kinds_and_stored_crds_add_new_ones() {
    let api = server().await;
    let client = api.client();
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    for (group, kind) in [
        ("", "Pod"),
        ("apps", "Deployment"),
        ("autoscaling", "HorizontalPodAutoscaler"),
        ("coordination.k8s.io", "Lease"),
        ("events.k8s.io", "Event"),
        ("appmesh.k8s.aws", "VirtualRouter"),
        ("gateway.networking.k8s.io", "HTTPRoute"),
        ("serin.dev", "Canary"),
        ("serin.dev", "MetricTemplate"),
        ("serin.dev", "AlertProvider"),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ] {
        let g = discovery
            .get(group)
            .unwrap_or_else(|| panic!("group {group:?} not discovered"));
        assert!(
            g.recommended_kind(kind).is_some(),
            "{kind} not discovered in {group:?}"
        );
    }
    let (_, caps) = discovery
        .get("apps")
        .unwrap()
        .recommended_kind("Deployment")
        .unwrap();
    let subs: Vec<&str> = caps
        .subresources
        .iter()
        .map(|(r, _)| r.plural.as_str())
        .collect();
    assert_eq!(subs, ["status", "scale"]);
    assert_eq!(
        client.apiserver_version().await.unwrap().git_version,
        "v1.33.0"
    );

    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}],
        },
    });
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let created = crds
        .create(
            &PostParams::default(),
            &serde_json::from_value(crd).unwrap(),
        )
        .await
        .unwrap();
    let established = created.data["status"]["conditions"].as_array().unwrap();
    assert!(
        established
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    );
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, _) = discovery
        .get("example.com")
        .unwrap()
        .recommended_kind("Widget")
        .unwrap();
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "test", &ar);
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}});
    widgets
        .create(&PostParams::default(), &serde_json::from_value(w).unwrap())
        .await
        .unwrap();
    assert_eq!(api.list("example.com/v1", "Widget", "test").len(), 1);
}

#[tokio::test]
async fn recorder_events_are_readable_through_both_event_apis() {
    let api = server().await;
    let client = api.client();
    let recorder = Recorder::new(client.clone(), Reporter::from("serin"));
    let c: Canary = serde_json::from_value(canary("podinfo")).unwrap();
    let created = Api::<Canary>::namespaced(client.clone(), "test")
        .create(&PostParams::default(), &c)
        .await
        .unwrap();
    let reference = created.object_ref(&());
    let ev = KubeEvent {
        type_: EventType::Normal,
        reason: "NewRevision".into(),
        note: Some("New revision detected! Scaling up podinfo.test".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();

    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "test");
    let listed = core.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 1, "the repeat is a series on the same Event");
    let e = &listed[0];
    assert_eq!(e.reason.as_deref(), Some("NewRevision"));
    assert_eq!(
        e.message.as_deref(),
        Some("New revision detected! Scaling up podinfo.test")
    );
    assert_eq!(e.involved_object.name.as_deref(), Some("podinfo"));
    assert_eq!(e.reporting_component.as_deref(), Some("serin"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(Some(2)));
    let by_object = core
        .list(
            &ListParams::default().fields("involvedObject.kind=Canary,involvedObject.name=podinfo"),
        )
        .await
        .unwrap();
    assert_eq!(by_object.items.len(), 1);

    let v1: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, "test");
    let e = &v1.list(&ListParams::default()).await.unwrap().items[0];
    assert_eq!(
        e.note.as_deref(),
        Some("New revision detected! Scaling up podinfo.test")
    );
    assert_eq!(
        e.regarding.as_ref().unwrap().kind.as_deref(),
        Some("Canary")
    );
}

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed: {0}")]
struct ReconcileError(String);

async fn reconcile(c: Arc<Canary>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    use kube::runtime::finalizer::{Event as Fin, finalizer};
    let ns = c.namespace().unwrap_or_default();
    let canaries: Api<Canary> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&canaries, "serin.dev/finalizer", c, |event| async {
        match event {
            Fin::Apply(c) => {
                let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
                let mut owned = configmap(
                    &format!("{}-owned", c.name_any()),
                    json!({"app.kubernetes.io/managed-by": "serin"}),
                );
                owned.metadata.owner_references = Some(vec![c.controller_owner_ref(&()).unwrap()]);
                let ssa = PatchParams::apply("serin").force();
                cms.patch(&owned.name_any(), &ssa, &Patch::Apply(&owned))
                    .await
                    .map_err(|e| ReconcileError(e.to_string()))?;
                let status = json!({"status": {"phase": "Initialized"}});
                canaries
                    .patch_status(
                        &c.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await
                    .map_err(|e| ReconcileError(e.to_string()))?;
                let ev = KubeEvent {
                    type_: EventType::Normal,
                    reason: "Initialized".into(),
                    note: Some(format!("Initialization done! {}.{ns}", c.name_any())),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                ctx.recorder
                    .publish(&ev, &c.object_ref(&()))
                    .await
                    .map_err(|e| ReconcileError(e.to_string()))?;
                Ok(Action::await_change())
            }
            Fin::Cleanup(_) => Ok(Action::await_change()),
        }
    })
    .await
    .map_err(|e: kube::runtime::finalizer::Error<ReconcileError>| ReconcileError(e.to_string()))
}

#[tokio::test]
async fn a_kube_runtime_controller_reconciles_a_canary_end_to_end() {
    let api = server().await;
    let client = api.client();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), Reporter::from("serin")),
    });
    let canaries: Api<Canary> = Api::all(client.clone());
    let controller = Controller::new(canaries, watcher::Config::default())
        .owns(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
        )
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_millis(100)),
            ctx,
        )
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    api.put(canary("podinfo"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in api.requests() {
        eprintln!("REQ {} {} {}", r.summary(), r.query, r.content_type);
    }
    let c = api
        .wait_for(
            "serin.dev/v1beta1",
            "Canary",
            "test",
            "podinfo",
            WAIT,
            |c| c["status"]["phase"] == "Initialized",
        )
        .await;
    assert_eq!(c["metadata"]["finalizers"], json!(["serin.dev/finalizer"]));
    let owned = api.get("v1", "ConfigMap", "test", "podinfo-owned").unwrap();
    assert_eq!(
        owned["metadata"]["ownerReferences"][0]["uid"],
        c["metadata"]["uid"]
    );
    let events = api.list("events.k8s.io/v1", "Event", "test");
    assert!(
        events.iter().any(|e| e["reason"] == "Initialized"),
        "{events:?}"
    );

    // Deleting runs the cleanup, the finalizer goes, and the owned object is collected.
    api.delete("serin.dev/v1beta1", "Canary", "test", "podinfo");
    let deadline = tokio::time::Instant::now() + WAIT;
    while api
        .get("serin.dev/v1beta1", "Canary", "test", "podinfo")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller did not remove its finalizer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        api.get("v1", "ConfigMap", "test", "podinfo-owned")
            .is_none()
    );
    running.abort();
}

async fn kubectl(api: &ApiServer, args: &[&str]) -> String {
    let out = api.kubectl().args(args).output().await.unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn kubectl_gets_applies_patches_and_watches() {
    let api = server().await;
    let dir = std::env::temp_dir().join(format!("serin-kubectl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("podinfo.yaml");
    let mut d = deployment("podinfo", "podinfo:6.0.0");
    d["apiVersion"] = json!("apps/v1");
    std::fs::write(&manifest, serde_json::to_string(&d).unwrap()).unwrap();
    let path = manifest.to_str().unwrap();

    assert_eq!(
        kubectl(&api, &["apply", "-f", path]).await.trim(),
        "deployment.apps/podinfo created"
    );
    assert!(
        kubectl(&api, &["get", "deployments", "-n", "test"])
            .await
            .contains("podinfo")
    );
    let yaml = kubectl(
        &api,
        &["get", "deployment", "podinfo", "-n", "test", "-o", "yaml"],
    )
    .await;
    assert!(yaml.contains("image: podinfo:6.0.0"), "{yaml}");

    kubectl(
        &api,
        &[
            "set",
            "image",
            "-n",
            "test",
            "deployment/podinfo",
            "app=podinfo:6.0.1",
        ],
    )
    .await;
    let d = api.get("apps/v1", "Deployment", "test", "podinfo").unwrap();
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "podinfo:6.0.1");
    assert_eq!(
        container["ports"][0]["containerPort"], 9898,
        "strategic merge kept the ports"
    );
    assert_eq!(d["metadata"]["generation"], 2);

    let mut changed = deployment("podinfo", "podinfo:6.0.2");
    changed["spec"]["replicas"] = json!(3);
    std::fs::write(&manifest, serde_json::to_string(&changed).unwrap()).unwrap();
    assert_eq!(
        kubectl(&api, &["apply", "-f", path]).await.trim(),
        "deployment.apps/podinfo configured"
    );
    let d = api.get("apps/v1", "Deployment", "test", "podinfo").unwrap();
    assert_eq!(
        (
            d["spec"]["replicas"].clone(),
            d["spec"]["template"]["spec"]["containers"][0]["image"].clone()
        ),
        (json!(3), json!("podinfo:6.0.2"))
    );
    assert_eq!(
        kubectl(&api, &["apply", "--server-side", "-f", path])
            .await
            .trim(),
        "deployment.apps/podinfo serverside-applied"
    );

    api.put(canary("podinfo"));
    let mut watch = api
        .kubectl()
        .args([
            "get",
            "canary",
            "podinfo",
            "-n",
            "test",
            "-w",
            "-o",
            "jsonpath={.spec.suspend}{\"\\n\"}",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some(""), "the current state first");
    kubectl(
        &api,
        &[
            "patch",
            "canary",
            "podinfo",
            "-n",
            "test",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ],
    )
    .await;
    let next = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.as_deref(), Some("true"), "the watch shows the patch");
    kubectl(
        &api,
        &[
            "patch",
            "canary",
            "podinfo",
            "-n",
            "test",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/suspend","value":false}]"#,
        ],
    )
    .await;
    let next = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.as_deref(), Some("false"));
    watch.kill().await.unwrap();

    let out = kubectl(&api, &["delete", "deployment", "podinfo", "-n", "test"]).await;
    assert_eq!(out.trim(), r#"deployment.apps "podinfo" deleted"#);
    assert!(
        api.get("apps/v1", "Deployment", "test", "podinfo")
            .is_none()
    );
    let api_resources = kubectl(
        &api,
        &["api-resources", "--api-group", "serin.dev", "-o", "name"],
    )
    .await;
    assert_eq!(
        api_resources.lines().collect::<Vec<_>>(),
        [
            "alertproviders.serin.dev",
            "canaries.serin.dev",
            "metrictemplates.serin.dev"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_kubeconfig_file_and_the_bare_url_both_reach_the_server() {
    let api = server().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let namespaces: Api<Namespace> = Api::all(kube::Client::try_from(config).unwrap());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert_eq!(
        names,
        [
            "default",
            "kube-node-lease",
            "kube-public",
            "kube-system",
            "test"
        ]
    );

    let cache = std::env::temp_dir().join(format!("serin-kubectl-cache-{}", std::process::id()));
    let out = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", "/dev/null")
        .args(["--server", api.url(), "--cache-dir"])
        .arg(&cache)
        .args(["get", "namespace", "test", "-o", "jsonpath={.status.phase}"])
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Active");
}

/// The Deployment's status fields a readiness check reads.
fn rollout(d: &Value) -> (i64, i64, i64, i64, i64, String, String) {
    let n = |f: &str| d["status"][f].as_i64().unwrap_or(0);
    let cond = |t: &str| {
        d["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .map(|c| {
                format!(
                    "{}/{}",
                    c["status"].as_str().unwrap_or(""),
                    c["reason"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_default()
    };
    (
        n("observedGeneration"),
        n("replicas"),
        n("updatedReplicas"),
        n("readyReplicas"),
        n("availableReplicas"),
        cond("Available"),
        cond("Progressing"),
    )
}

async fn wait_rollout(
    api: &ApiServer,
    name: &str,
    want: (i64, i64, i64, i64, i64, &str, &str),
) -> Value {
    let want = (
        want.0,
        want.1,
        want.2,
        want.3,
        want.4,
        want.5.to_string(),
        want.6.to_string(),
    );
    api.wait_for("apps/v1", "Deployment", "test", name, WAIT, |d| {
        rollout(d) == want
    })
    .await
}

#[tokio::test]
async fn kubelet_makes_deployments_ready_after_their_delay() {
    let api = server().await;
    let kubelet = Kubelet::start_with(&api, Pods::ReadyAfter(Duration::from_millis(300)));
    kubelet.set("instant", Pods::ReadyAfter(Duration::ZERO));
    api.put(deployment("podinfo", "podinfo:1"));
    let rolling = wait_rollout(
        &api,
        "podinfo",
        (
            1,
            2,
            2,
            0,
            0,
            "False/MinimumReplicasUnavailable",
            "True/ReplicaSetUpdated",
        ),
    )
    .await;
    assert!(
        rolling["status"].get("readyReplicas").is_none(),
        "zero counts are omitted"
    );
    let started = tokio::time::Instant::now();
    wait_rollout(
        &api,
        "podinfo",
        (
            1,
            2,
            2,
            2,
            2,
            "True/MinimumReplicasAvailable",
            "True/NewReplicaSetAvailable",
        ),
    )
    .await;
    println!(
        "podinfo ready {:?} after its rollout status (delay 300ms)",
        started.elapsed()
    );

    // A new template: the old pods serve (and are pending termination) until the new ones are ready.
    let mut next = deployment("podinfo", "podinfo:2");
    next["spec"]["replicas"] = json!(3);
    api.put(next);
    wait_rollout(
        &api,
        "podinfo",
        (
            2,
            5,
            3,
            2,
            2,
            "True/MinimumReplicasAvailable",
            "True/ReplicaSetUpdated",
        ),
    )
    .await;
    wait_rollout(
        &api,
        "podinfo",
        (
            2,
            3,
            3,
            3,
            3,
            "True/MinimumReplicasAvailable",
            "True/NewReplicaSetAvailable",
        ),
    )
    .await;

    // Scaled to zero: done at once, nothing counted.
    api.put(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "podinfo"}},
        "template": next_template("podinfo", "podinfo:2")}}));
    wait_rollout(
        &api,
        "podinfo",
        (
            3,
            0,
            0,
            0,
            0,
            "True/MinimumReplicasAvailable",
            "True/NewReplicaSetAvailable",
        ),
    )
    .await;

    api.put(deployment("instant", "podinfo:1"));
    wait_rollout(
        &api,
        "instant",
        (
            1,
            2,
            2,
            2,
            2,
            "True/MinimumReplicasAvailable",
            "True/NewReplicaSetAvailable",
        ),
    )
    .await;
}

fn next_template(name: &str, image: &str) -> Value {
    deployment(name, image)["spec"]["template"].clone()
}

#[tokio::test]
async fn kubelet_never_ready_exceeds_the_progress_deadline_and_can_be_changed_at_run_time() {
    let api = server().await;
    let kubelet = Kubelet::start(&api);
    kubelet.set("stuck", Pods::NeverReady);
    let mut d = deployment("stuck", "podinfo:1");
    d["spec"]["progressDeadlineSeconds"] = json!(1);
    api.put(d);
    wait_rollout(
        &api,
        "stuck",
        (
            1,
            2,
            2,
            0,
            0,
            "False/MinimumReplicasUnavailable",
            "True/ReplicaSetUpdated",
        ),
    )
    .await;
    let stuck = wait_rollout(
        &api,
        "stuck",
        (
            1,
            2,
            2,
            0,
            0,
            "False/MinimumReplicasUnavailable",
            "False/ProgressDeadlineExceeded",
        ),
    )
    .await;
    let conds = stuck["status"]["conditions"].as_array().unwrap();
    assert!(
        conds[1]["message"]
            .as_str()
            .unwrap()
            .contains("has timed out progressing")
    );

    kubelet.set("stuck", Pods::ReadyAfter(Duration::from_millis(50)));
    wait_rollout(
        &api,
        "stuck",
        (
            1,
            2,
            2,
            2,
            2,
            "True/MinimumReplicasAvailable",
            "True/NewReplicaSetAvailable",
        ),
    )
    .await;
}

#[tokio::test]
async fn kubelet_crash_after_ready_drops_availability() {
    let api = server().await;
    let kubelet = Kubelet::start(&api);
    kubelet.set(
        "test/flaky",
        Pods::CrashAfterReady {
            ready_after: Duration::from_millis(50),
            crash_after: Duration::from_millis(200),
        },
    );
    api.put(deployment("flaky", "podinfo:1"));
    wait_rollout(
        &api,
        "flaky",
        (
            1,
            2,
            2,
            2,
            2,
            "True/MinimumReplicasAvailable",
            "True/NewReplicaSetAvailable",
        ),
    )
    .await;
    let crashed = wait_rollout(
        &api,
        "flaky",
        (
            1,
            2,
            2,
            0,
            0,
            "False/MinimumReplicasUnavailable",
            "True/NewReplicaSetAvailable",
        ),
    )
    .await;
    assert_eq!(crashed["status"]["unavailableReplicas"], 2);

    kubelet.set("test/flaky", Pods::ReadyAfter(Duration::ZERO));
    wait_rollout(
        &api,
        "flaky",
        (
            1,
            2,
            2,
            2,
            2,
            "True/MinimumReplicasAvailable",
            "True/NewReplicaSetAvailable",
        ),
    )
    .await;
    drop(kubelet);
}
