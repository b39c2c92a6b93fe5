//! Group key files and key tags.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use canopy_kv::{channel_tag, tag_of, GroupKeys, KeyFileError};

const H: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn load_err(text: &str) -> (String, KeyFileError) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("group.keys");
    write(&path, text, 0o600);
    let err = GroupKeys::load(&path).expect_err("must fail");
    (path.display().to_string(), err)
}

#[test]
fn saved_keys_load_back_private_and_rotate() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("group.keys");
    let mut keys = GroupKeys::generate().expect("generate");
    keys.save(&path).expect("save");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.starts_with("# Canopy group key material"));
    assert_eq!(GroupKeys::load(&path).expect("load"), keys);
    let tag = tag_of(&keys, "users/alice");
    assert_eq!(keys.rotate().expect("rotate"), 2);
    assert_eq!(keys.current_key_id(), 2);
    assert_eq!(keys.key_ids(), vec![1, 2]);
    // The tag secret does not rotate: tags stay.
    assert_eq!(tag_of(&keys, "users/alice"), tag);
    keys.save(&path).expect("save again");
    assert_eq!(GroupKeys::load(&path).expect("load"), keys);
}

#[test]
fn key_file_errors_name_the_file_and_the_key() {
    type Case = (String, &'static str, fn(&KeyFileError) -> bool);
    let cases: Vec<Case> = vec![
        (
            format!("current = 1\n[[data_keys]]\nid = 1\nkey = \"{H}\"\n"),
            "tag_secret",
            |e| matches!(e, KeyFileError::Missing { .. }),
        ),
        (
            format!("tag_secret = \"zz{}\"\ncurrent = 1\n[[data_keys]]\nid = 1\nkey = \"{H}\"\n", &H[2..]),
            "tag_secret",
            |e| matches!(e, KeyFileError::BadHex { .. }),
        ),
        (
            format!("tag_secret = \"{H}\"\ncurrent = 1\n[[data_keys]]\nid = 1\nkey = \"{}\"\n", &H[..62]),
            "data_keys[0].key",
            |e| matches!(e, KeyFileError::WrongLength { len: 31, .. }),
        ),
        (
            format!("tag_secret = \"{H}\"\ncurrent = 3\n[[data_keys]]\nid = 1\nkey = \"{H}\"\n"),
            "current",
            |e| matches!(e, KeyFileError::UnknownCurrent { current: 3, .. }),
        ),
        (
            format!("tag_secret = \"{H}\"\ncurrent = 1\n[[data_keys]]\nid = 1\nkey = \"{H}\"\n[[data_keys]]\nid = 1\nkey = \"{H}\"\n"),
            "id 1",
            |e| matches!(e, KeyFileError::DuplicateId { id: 1, .. }),
        ),
        (
            format!("tag_secret = \"{H}\"\n[[data_keys]]\nid = 1\nkey = \"{H}\"\n"),
            "current",
            |e| matches!(e, KeyFileError::Missing { .. }),
        ),
        (
            format!("tag_secret = \"{H}\"\ncurrent = 1\n[[data_keys]]\nkey = \"{H}\"\n"),
            "data_keys[0].id",
            |e| matches!(e, KeyFileError::Missing { .. }),
        ),
        (
            "tag_secret = 5\n".to_string(),
            "tag_secret",
            |e| matches!(e, KeyFileError::Parse { .. }),
        ),
    ];
    for (text, key, kind) in cases {
        let (path, err) = load_err(&text);
        let msg = err.to_string();
        assert!(kind(&err), "{msg}");
        assert!(msg.contains(&path), "{msg} does not name the file");
        assert!(msg.contains(key), "{msg} does not name {key}");
    }
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("group.keys");
    GroupKeys::generate()
        .expect("gen")
        .save(&path)
        .expect("save");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = GroupKeys::load(&path).expect_err("group-readable");
    assert!(matches!(err, KeyFileError::Permissions { mode: 0o640, .. }));
    assert!(err.to_string().contains("group.keys"), "{err}");
    let missing = GroupKeys::load(&dir.path().join("nope")).expect_err("missing");
    assert!(missing.to_string().contains("nope"), "{missing}");
}

#[test]
fn tags_are_a_stable_keyed_function_of_the_channel() {
    // Expected values computed independently (Python's hmac over the same bytes):
    // HMAC-SHA256([0x11; 32], "canopy-kv-tag\0" || channel)[..8], big-endian.
    let keys = GroupKeys::from_parts([0x11; 32], [(1, [0; 32])]);
    assert_eq!(tag_of(&keys, "users/alice"), 5_541_173_971_643_865_587);
    assert_eq!(tag_of(&keys, "users/bob/x"), 5_541_173_971_643_865_587);
    assert_eq!(tag_of(&keys, "users/"), 5_541_173_971_643_865_587);
    assert_eq!(tag_of(&keys, "flat"), 15_254_729_244_741_783_996);
    assert_eq!(tag_of(&keys, "chat/1"), 396_740_772_817_857_038);
    assert_eq!(channel_tag(&[0x11; 32], "chat/"), 396_740_772_817_857_038);
    // Another secret, other tags.
    let other = GroupKeys::from_parts([0x12; 32], [(1, [0; 32])]);
    assert_ne!(tag_of(&other, "users/alice"), tag_of(&keys, "users/alice"));
}
