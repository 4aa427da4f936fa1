use iter8_core::routemap;
use serde_json::json;

use super::*;

const NS: &str = "default";

fn gvr(resource: &str) -> Gvr {
    let rt = Config::default()
        .resource_types
        .into_values()
        .find(|rt| rt.resource == resource)
        .expect("a default type");
    Gvr::of(&rt)
}

fn key(resource: &str, name: &str) -> ObjectKey {
    ObjectKey {
        gvr: gvr(resource),
        namespace: NS.into(),
        name: name.into(),
    }
}

fn rm_key(name: &str) -> RoutemapKey {
    RoutemapKey {
        namespace: NS.into(),
        name: name.into(),
    }
}

fn object(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).expect("an object")
}

fn isvc(name: &str, ready: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }))
}

fn record(names: &[&str]) -> RoutemapRecord {
    let versions: String = names
        .iter()
        .map(|n| format!("- resources: [{{gvrShort: isvc, name: {n}}}]\n"))
        .collect();
    RoutemapRecord::new(
        RoutemapMeta::default(),
        routemap::parse(&format!("versions:\n{versions}"), NS, &Config::default())
            .map_err(Hold::Invalid),
    )
}

/// A routing object as the API server returns it after our apply.
fn vs(name: &str, owner: &str, manager: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("{name}-uid"),
            "labels": {"iter8.tools/routing": "true"},
            "annotations": {APPLIED_HASH_ANNOTATION: "abc"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": format!("{owner}-uid")}],
            "managedFields": [{"manager": manager, "operation": "Apply"}],
        },
        "spec": {"hosts": ["x"]},
    }))
}

#[test]
fn an_object_change_queues_exactly_the_routemaps_that_read_it() {
    let config = Config::default();
    let mut st = State::default();
    st.upsert_routemap(rm_key("a"), record(&["m-0", "m-1"]), &config);
    st.upsert_routemap(rm_key("b"), record(&["m-1"]), &config);
    assert_eq!(
        st.upsert_object(AppObject::of(
            key("inferenceservices", "m-0"),
            &isvc("m-0", "True")
        )),
        [rm_key("a")]
    );
    assert_eq!(
        st.upsert_object(AppObject::of(
            key("inferenceservices", "m-1"),
            &isvc("m-1", "True")
        )),
        [rm_key("a"), rm_key("b")]
    );
    assert!(
        st.upsert_object(AppObject::of(
            key("inferenceservices", "m-9"),
            &isvc("m-9", "True")
        ))
        .is_empty(),
        "nobody reads m-9"
    );
    // The same content again (a resync, a status write of an unread field) queues nothing.
    assert!(st
        .upsert_object(AppObject::of(
            key("inferenceservices", "m-1"),
            &isvc("m-1", "True")
        ))
        .is_empty());
    // After b stops naming m-1, only a is queued.
    st.upsert_routemap(rm_key("b"), record(&["m-2"]), &config);
    assert_eq!(
        st.upsert_object(AppObject::of(
            key("inferenceservices", "m-1"),
            &isvc("m-1", "False")
        )),
        [rm_key("a")]
    );
    assert_eq!(
        st.remove_object(&key("inferenceservices", "m-1")),
        [rm_key("a")]
    );
    st.remove_routemap(&rm_key("a"));
    assert!(st
        .upsert_object(AppObject::of(
            key("inferenceservices", "m-0"),
            &isvc("m-0", "False")
        ))
        .is_empty());
}

#[test]
fn a_relist_removes_what_is_gone_and_queues_its_readers() {
    let config = Config::default();
    let mut st = State::default();
    st.upsert_routemap(rm_key("a"), record(&["m-0"]), &config);
    st.upsert_routemap(rm_key("b"), record(&["m-1"]), &config);
    let t = gvr("inferenceservices");
    st.replace_type(
        &t,
        vec![
            AppObject::of(key("inferenceservices", "m-0"), &isvc("m-0", "True")),
            AppObject::of(key("inferenceservices", "m-1"), &isvc("m-1", "True")),
        ],
    );
    let affected = st.replace_type(
        &t,
        vec![AppObject::of(
            key("inferenceservices", "m-0"),
            &isvc("m-0", "True"),
        )],
    );
    assert_eq!(affected, [rm_key("b")], "m-1 is gone, m-0 unchanged");
    assert_eq!(st.counts_by_type().get(&t.to_string()), Some(&1));
}

#[test]
fn a_held_routemap_indexes_nothing_but_stays_known() {
    let config = Config::default();
    let mut st = State::default();
    let held = RoutemapRecord::new(
        RoutemapMeta::default(),
        Err(Hold::UnacceptedVersion {
            found: Some("v2".into()),
            accepted: vec!["v1.1".into()],
        }),
    );
    st.upsert_routemap(rm_key("a"), held, &config);
    assert!(st
        .upsert_object(AppObject::of(
            key("inferenceservices", "m-0"),
            &isvc("m-0", "True")
        ))
        .is_empty());
    assert!(st.routemap(&rm_key("a")).is_some());
    assert_eq!(st.routemap_keys(), [rm_key("a")]);
}

#[test]
fn only_routing_objects_the_controller_wrote_are_owned_or_orphaned() {
    let mut st = State::default();
    let t = gvr("virtualservices");
    let vs_key = |n: &str| key("virtualservices", n);
    st.replace_routing(
        &t,
        vec![
            RoutingSeen::of(vs_key("mine"), &vs("mine", "a", FIELD_MANAGER)),
            RoutingSeen::of(vs_key("mine-too"), &vs("mine-too", "a", FIELD_MANAGER)),
            // Labelled and owned by a's name, but written by someone else.
            RoutingSeen::of(vs_key("theirs"), &vs("theirs", "a", "kubectl")),
            RoutingSeen::of(vs_key("of-b"), &vs("of-b", "b", FIELD_MANAGER)),
        ],
    );
    let owned: Vec<String> = st
        .routing_owned_by(&rm_key("a"))
        .into_iter()
        .map(|(k, _)| k.name)
        .collect();
    assert_eq!(owned, ["mine", "mine-too"]);
    assert_eq!(st.orphan_owners(), [rm_key("a"), rm_key("b")]);
    st.upsert_routemap(rm_key("a"), record(&["m-0"]), &Config::default());
    assert_eq!(st.orphan_owners(), [rm_key("b")], "a is known now");
    let seen = st.routing(&vs_key("mine")).expect("seen");
    assert_eq!(seen.uid, "mine-uid");
    assert_eq!(seen.owner, Some(("a".into(), "a-uid".into())));
    assert!(seen.value()["metadata"].get("managedFields").is_none());
}

#[test]
fn a_routing_object_change_is_news_only_when_what_we_compare_changed() {
    let mut st = State::default();
    let k = key("virtualservices", "mine");
    assert!(st.upsert_routing(RoutingSeen::of(k.clone(), &vs("mine", "a", FIELD_MANAGER))));
    let mut same = vs("mine", "a", FIELD_MANAGER);
    same.metadata.resource_version = Some("99".into());
    assert!(
        !st.upsert_routing(RoutingSeen::of(k.clone(), &same)),
        "a new resourceVersion alone is no news"
    );
    let mut edited = vs("mine", "a", FIELD_MANAGER);
    edited.data["spec"]["hosts"] = json!(["y"]);
    assert!(st.upsert_routing(RoutingSeen::of(k, &edited)));
}

#[test]
fn a_late_watch_event_does_not_replace_a_newer_write() {
    let mut st = State::default();
    let k = key("virtualservices", "mine");
    let at = |rv: &str, host: &str| {
        let mut o = vs("mine", "a", FIELD_MANAGER);
        o.metadata.resource_version = Some(rv.into());
        o.data["spec"]["hosts"] = json!([host]);
        o
    };
    assert!(st.upsert_routing(RoutingSeen::of(k.clone(), &at("11", "new"))));
    assert!(
        !st.upsert_routing(RoutingSeen::of(k.clone(), &at("10", "old"))),
        "older than what we hold"
    );
    assert_eq!(
        st.routing(&k).unwrap().value()["spec"]["hosts"],
        json!(["new"])
    );
    assert!(st.upsert_routing(RoutingSeen::of(k.clone(), &at("12", "newer"))));
}

#[test]
fn contains_allows_server_defaults_but_not_changes() {
    let desired = json!({"spec": {"http": [{"route": [{"destination": {"host": "a"}}]}]}});
    let live = json!({"spec": {"http": [{"route": [{"destination": {"host": "a"}, "weight": 100}]}]}, "status": {}});
    assert!(contains(&live, &desired));
    let edited = json!({"spec": {"http": [{"route": [{"destination": {"host": "b"}}]}]}});
    assert!(!contains(&edited, &desired));
    let extra_route =
        json!({"spec": {"http": [{"route": [{"destination": {"host": "a"}}]}, {"route": []}]}});
    assert!(!contains(&extra_route, &desired));
}
