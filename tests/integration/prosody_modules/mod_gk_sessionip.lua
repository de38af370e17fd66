-- mod_gk_sessionip.lua: written for gatekeep's integration tests.
--
-- Prints, on every resource bind, the address Prosody holds for the c2s session
-- (session.ip, set from the connection when it was accepted; behind
-- mod_net_proxy, the PROXY header's source), so a test can tell whether the
-- client address a proxy announced reached Prosody:
--   gk_sessionip bind jid=alice@example.test/res ip=127.0.0.5 port=40123
module:hook("resource-bind", function(event)
	local session = event.session;
	local conn = session.conn;
	local port = conn and conn.port and conn:port() or "?";
	module:log("info", "gk_sessionip bind jid=%s ip=%s port=%s",
		tostring(session.full_jid), tostring(session.ip), tostring(port));
end);
