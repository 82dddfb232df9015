//! Schema migrations against real PostgreSQL: replicas migrating at once apply each
//! migration exactly once, and an applied migration whose text changed stops both
//! `warden migrate` and `warden serve`.

use crate::support::warden::{EXIT_TIMEOUT, READY_LINE, START_TIMEOUT, run};
use crate::support::{Profile, TestDb, WardenProcess};

/// Every migration the binary applies (built-ins and registered extensions).
fn expected_migrations() -> Vec<warden::db::Migration> {
    warden::extension::Registry::with(&[])
        .all_migrations()
        .to_vec()
}

/// The number in `N applied, M already in place`.
fn applied_count(stdout: &str) -> usize {
    stdout
        .lines()
        .find(|l| l.contains(" applied, "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"))
}

#[test]
fn concurrent_migrate_runs_apply_each_migration_once() {
    let expected = expected_migrations();
    // A few rounds, each on a fresh database, so the race is actually run more than once.
    for _ in 0..3 {
        let db = TestDb::empty();
        let profile = Profile::with_database(db.url());
        let mut first = WardenProcess::spawn(profile.command(&["migrate"]), None);
        let mut second = WardenProcess::spawn(profile.command(&["migrate"]), None);
        let first_status = first.wait_exit(EXIT_TIMEOUT);
        let second_status = second.wait_exit(EXIT_TIMEOUT);
        assert!(first_status.success(), "first run:\n{}", first.log());
        assert!(second_status.success(), "second run:\n{}", second.log());
        assert_eq!(
            applied_count(&first.stdout()) + applied_count(&second.stdout()),
            expected.len(),
            "together the two runs apply each migration once:\n{}\n{}",
            first.log(),
            second.log()
        );

        let rows = db.query(
            "SELECT namespace, version, count(*) FROM warden_schema_migrations \
             GROUP BY namespace, version ORDER BY namespace, version",
        );
        let recorded: Vec<(String, i32, i64)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut wanted: Vec<(String, i32, i64)> = expected
            .iter()
            .map(|m| (m.namespace.to_owned(), m.version as i32, 1))
            .collect();
        wanted.sort();
        assert_eq!(recorded, wanted);
        // The foundation migration inserts the one instance row: applied twice, it
        // would have failed or left two.
        let instances: i64 = db.query("SELECT count(*) FROM warden_instance")[0].get(0);
        assert_eq!(instances, 1);

        // A later run finds everything in place.
        let again = run(profile.command(&["migrate"]));
        assert!(again.status.success(), "{again:?}");
        assert!(
            again
                .stdout
                .contains(&format!("0 applied, {} already in place", expected.len())),
            "{again:?}"
        );
    }
}

#[test]
fn changed_checksum_of_an_applied_migration_stops_migrate_and_serve() {
    let first = expected_migrations()
        .into_iter()
        .min_by_key(|m| (m.namespace, m.version))
        .expect("at least one migration");
    let db = TestDb::new();
    db.execute(&format!(
        "UPDATE warden_schema_migrations SET checksum = 'deadbeef' \
         WHERE namespace = '{}' AND version = {}",
        first.namespace, first.version
    ));
    let expected = format!(
        "migration {}/{:04} ({}) was applied with checksum deadbeef but the binary's copy has {}",
        first.namespace,
        first.version,
        first.name,
        first.checksum()
    );

    let mut profile = Profile::with_database(db.url());
    let output = run(profile.command(&["migrate"]));
    assert!(!output.status.success(), "{output:?}");
    assert!(output.stderr.contains(&expected), "{output:?}");
    assert!(
        output
            .stderr
            .contains("an applied migration must never change; add a new migration instead"),
        "{output:?}"
    );

    let mut serve = profile.spawn();
    let status = serve.wait_exit(START_TIMEOUT);
    assert!(!status.success(), "{}", serve.log());
    assert!(serve.stderr().contains(&expected), "{}", serve.log());
    assert!(!serve.log().contains(READY_LINE), "{}", serve.log());
}
