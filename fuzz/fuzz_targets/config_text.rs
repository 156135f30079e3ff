//! Any text as the agent's config file: parsing and validation never panic; an accepted
//! config keeps every invariant the agent relies on, and accepting it again from its own
//! YAML re-serialised gives the same config (the validator reads the YAML's values, not its
//! spelling).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quickcmd_agent::config::AgentConfig;
use quickcmd_agent::fuzzing::load_config;

fuzz_target!(|text: &str| {
    // Secret and TLS file paths are opened: keep the fuzzer away from device and kernel
    // files (a read of /dev/zero or /proc/kmsg would hang, not find a bug).
    if text.contains("/dev") || text.contains("/proc") || text.contains("/sys") {
        return;
    }
    let Ok(mut config) = load_config(text) else {
        return;
    };
    check(&config);

    let value: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Null
    } else {
        serde_yaml::from_str(text).expect("text the config accepted is YAML")
    };
    // The comparison below holds only where re-serialising keeps every scalar's spelling: a
    // plain `-.INF`, `0x1F` or `1e3` is a number to a YAML `Value` (re-serialised `-.inf`,
    // `31`, `1000.0`) but the spelling itself to a string field such as a controller id
    // (fuzz finding, seeds/config_text/number-spelled-id.yaml), and a plain `02` is a string
    // to a `Value` (re-serialised quoted, `'02'`) but a number to a float field (fuzz
    // finding, seeds/config_text/leading-zero-number.yaml): such a text means a different
    // config once re-spelled, so it is only checked for the invariants above.
    if !scalars_keep_their_spelling(&value, text) {
        return;
    }
    let again = serde_yaml::to_string(&without_nulls(value)).expect("a YAML value serialises");
    let mut reloaded = match load_config(&again) {
        Ok(c) => c,
        Err(e) => panic!("accepted\n{text}\nbut not its re-serialisation\n{again}\n{e}"),
    };
    // Warnings may quote line numbers, which re-serialising moves.
    config.warnings.clear();
    reloaded.warnings.clear();
    assert_eq!(format!("{config:?}"), format!("{reloaded:?}"));
});

/// Whether every number and bool in `value`, re-serialised, is spelled so in `text` (as often as it
/// occurs), and every string re-serialised in quotes was quoted that way in `text`.
fn scalars_keep_their_spelling(value: &serde_yaml::Value, text: &str) -> bool {
    let mut spelled = Vec::new();
    if !spellings_to_find(value, &mut spelled) {
        return false;
    }
    spelled.iter().all(|word| {
        let wanted = spelled.iter().filter(|other| *other == word).count();
        occurrences_alone(text, word) >= wanted
    })
}

/// Collects the re-serialised spellings `text` must contain; false where re-serialising
/// cannot keep the meaning at all.
fn spellings_to_find(value: &serde_yaml::Value, out: &mut Vec<String>) -> bool {
    use serde_yaml::Value;
    match value {
        // `FALSE` or `True` is a bool to a `Value`, re-spelled `false`/`true`, but the word
        // itself to a string field (fuzz finding, seeds/config_text/bool-spelled-id.yaml).
        Value::Bool(flag) => {
            out.push(flag.to_string());
            true
        }
        Value::Number(number) => match serde_yaml::to_string(number) {
            Ok(spelled) => {
                out.push(spelled.trim_end().to_owned());
                true
            }
            Err(_) => false,
        },
        Value::String(string) => match serde_yaml::to_string(string) {
            Ok(spelled) if spelled.starts_with('\'') || spelled.starts_with('"') => {
                out.push(spelled.trim_end().to_owned());
                true
            }
            Ok(_) => true,
            Err(_) => false,
        },
        Value::Mapping(map) => map
            .iter()
            .all(|(k, v)| spellings_to_find(k, out) && spellings_to_find(v, out)),
        // A null item (`- ~`, an empty anchored node) is re-spelled `null`, which a string
        // field reads as the word (fuzz finding, seeds/config_text/null-list-item.yaml).
        Value::Sequence(items) => items
            .iter()
            .all(|v| !v.is_null() && spellings_to_find(v, out)),
        Value::Tagged(tagged) => spellings_to_find(&tagged.value, out),
        _ => true,
    }
}

/// How often `word` occurs in `text` as a whole scalar, not inside a longer one: `0` does
/// not stand alone in `-0` or `0123` (fuzz finding, seeds/config_text/minus-zero-id.yaml).
fn occurrences_alone(text: &str, word: &str) -> usize {
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || "_.+-".contains(c));
    text.match_indices(word)
        .filter(|(at, _)| {
            !glued(text[..*at].chars().next_back())
                && !glued(text[at + word.len()..].chars().next())
        })
        .count()
}

/// The value with every null-valued mapping key removed. serde_yaml reads a key with an
/// empty value (`controllers:`) as absent, its default, but refuses an explicit `null` for
/// a list (fuzz finding, seeds/config_text/empty-list-value.yaml): removing the key is the
/// re-serialisation that means the same config.
fn without_nulls(value: serde_yaml::Value) -> serde_yaml::Value {
    use serde_yaml::Value;
    match value {
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(without_nulls).collect()),
        Value::Tagged(tagged) => Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
            tag: tagged.tag,
            value: without_nulls(tagged.value),
        })),
        other => other,
    }
}

fn check(config: &AgentConfig) {
    let limits = &config.limits;
    assert!(!config.controllers.is_empty());
    assert!(config.max_concurrent_jobs >= 1);
    assert!(limits.default_cpu_limit.is_finite() && limits.default_cpu_limit > 0.0);
    assert!(limits.default_cpu_limit <= limits.max_cpu_limit);
    assert!(limits.default_memory_limit >= 6 * 1024 * 1024);
    assert!(limits.default_memory_limit <= limits.max_memory_limit);
    assert!(!limits.default_timeout.is_zero());
    assert!(limits.default_timeout <= limits.max_timeout);
    assert!(limits.pids_limit >= 1);
    assert!(config.max_output_bytes >= 1024);
    assert!(limits.allowed_images.contains(&limits.default_image));
    // Never root, in any spelling: numeric, non-zero uid and gid.
    let (uid, gid) = limits
        .sandbox_user
        .split_once(':')
        .expect("sandbox_user has a group");
    for id in [uid, gid] {
        assert!(
            id.bytes().all(|b| b.is_ascii_digit()),
            "{}",
            limits.sandbox_user
        );
        assert!(
            id.parse::<u32>().is_ok_and(|n| n != 0),
            "{}",
            limits.sandbox_user
        );
    }
    if config.tls.is_none() {
        assert!(
            config.listen.ip().is_loopback(),
            "plain HTTP only on loopback"
        );
    }
}
