-- mod_gk_proxy_secure.lua: treat c2s sessions that a TLS-terminating proxy (gatekeep's
-- terminate action) hands to Prosody through mod_net_proxy as encrypted.
--
-- Prosody 0.12's mod_net_proxy accepts the PROXY protocol only on plain ports, so every
-- session arriving through it is unencrypted as far as Prosody knows: with
-- c2s_require_encryption (the default) it offers STARTTLS and no authentication, which
-- a client already inside TLS (direct TLS to gatekeep) cannot use. This module marks a
-- session secure when
--   * it arrived through mod_net_proxy (the PROXY header came from one of
--     proxy_trusted_proxies; the session's address is the real client's), and
--   * on one of the ports listed in gk_proxy_secure_ports, which you map to c2s in
--     proxy_port_mappings and let only gatekeep's terminated routes reach.
-- Keep a separate mod_net_proxy port, not listed here, for plain/STARTTLS traffic.
--
-- Only session.secure is set (what c2s_require_encryption and SASL mechanism choice
-- look at), not session.encrypted: Prosody would then ask the plain socket for TLS
-- details (channel binding), which a proxied session cannot have.
--
--   modules_enabled = { ...; "net_proxy"; "gk_proxy_secure"; }
--   proxy_port_mappings = { [5223] = "c2s" }      -- gatekeep terminate -> here
--   proxy_trusted_proxies = { "127.0.0.1" }
--   gk_proxy_secure_ports = { 5223 }
--
-- MIT licence, part of gatekeep (contrib/prosody/).

local secure_ports = module:get_option_set("gk_proxy_secure_ports", {});

module:hook("stream-features", function (event)
	local session = event.origin;
	if session.secure ~= nil then return; end -- already TLS, or STARTTLS under way
	local conn = session.conn;
	-- mod_net_proxy keeps the proxy's own address in conn.proxyip once it has
	-- accepted a PROXY header from a trusted proxy.
	if not (conn and conn.proxyip and conn.serverport) then return; end
	local port = tonumber(conn:serverport()); -- a string in server_epoll
	if not (secure_ports:contains(port) or secure_ports:contains(tostring(port))) then return; end
	session.secure = true;
	session.log("info", "gk_proxy_secure: encrypted by the TLS-terminating proxy %s "
		.. "(client %s, port %s)", tostring(conn:proxyip()), tostring(session.ip), tostring(port));
end, 1000);
