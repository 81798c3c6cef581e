//! External programs a test needs (`redis-server`, `nghttp`, …): a test whose
//! program is missing is skipped with a message, so that `cargo test` passes
//! on a machine without them; `.ci/run` installs every one and sets
//! `HERALD_REQUIRE_TOOLS=1`, under which a missing program fails the test
//! instead (CI never skips silently).

/// Whether `program` is on the PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Whether every one of `programs` is installed; when one is not, says so
/// (`SKIPPED <test>`) and returns false, or panics under
/// `HERALD_REQUIRE_TOOLS=1`.
pub fn have(test: &str, programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !on_path(p)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{} not installed", missing.join(", "));
    if std::env::var("HERALD_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{test} cannot run: {why} (HERALD_REQUIRE_TOOLS=1)");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Whether a Redis is there for a test on the shared one: it answers on
/// 127.0.0.1:6379, or `redis-server` can start one (see [`have`]).
pub fn redis(test: &str) -> bool {
    super::redis::answers_ping(super::redis::SHARED_REDIS_PORT) || have(test, &["redis-server"])
}

/// Return from the test, skipped, unless every program named is installed
/// (see [`have`]).
#[macro_export]
macro_rules! need {
    ($($program:expr),+ $(,)?) => {
        if !$crate::support::tools::have(
            concat!(module_path!(), " line ", line!()),
            &[$($program),+],
        ) {
            return;
        }
    };
}

/// Return from the test, skipped, unless a Redis is there for it (see
/// [`redis`]).
#[macro_export]
macro_rules! need_redis {
    () => {
        if !$crate::support::tools::redis(concat!(module_path!(), " line ", line!())) {
            return;
        }
    };
}
