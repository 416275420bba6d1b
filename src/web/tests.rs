use super::*;
use api::sample_thumb_id;
use metrics::label;

#[test]
fn only_numeric_sample_ids_reach_the_store() {
    assert_eq!(sample_thumb_id("/api/samples/12/thumb"), Some(Some(12)));
    for bad in [
        "/api/samples/../../etc/passwd/thumb",
        "/api/samples/%2e%2e/thumb",
        "/api/samples//thumb",
        "/api/samples/-1/thumb",
        "/api/samples/99999999999999999999999/thumb",
    ] {
        assert_eq!(sample_thumb_id(bad), Some(None), "{bad}");
    }
    assert_eq!(sample_thumb_id("/api/samples"), None);
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

#[test]
fn slots_are_capped_and_returned() {
    let n = AtomicUsize::new(0);
    let a = take_slot(&n, 2).unwrap();
    let _b = take_slot(&n, 2).unwrap();
    assert!(take_slot(&n, 2).is_none());
    drop(a);
    assert!(take_slot(&n, 2).is_some());
}

#[test]
fn the_login_url_names_the_bound_address() {
    let u = login_url(Some("127.0.0.1:8088".parse().unwrap()), "ab");
    assert_eq!(u, "http://127.0.0.1:8088/login?token=ab");
}
