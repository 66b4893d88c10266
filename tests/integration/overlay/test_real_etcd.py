"""The etcd and lease tests of tests/unit/overlay, run against a real etcd (Debian etcd-server) through the
JSON gateway client: the fake and the real server must agree."""

from tests.unit.overlay.test_etcd import (  # noqa: F401 (collected here with the real `etcd` fixture)
    test_client_reports_a_stopped_etcd_as_unavailable,
    test_lease_keys_go_when_the_lease_is_revoked,
    test_put_get_prefix_and_revisions,
    test_txn_create_only_once,
    test_watch_sees_puts_and_deletes,
)
from tests.unit.overlay.test_leases import (  # noqa: F401
    test_a_restarted_node_gets_its_subnet_back,
    test_concurrent_agents_never_share_a_subnet,
    test_exhaustion_is_reported,
    test_previous_subnet_is_preferred_when_free,
    test_release_gives_the_subnet_back,
    test_removing_a_node_deletes_its_leases_only,
    test_watch_reports_peer_changes,
)
