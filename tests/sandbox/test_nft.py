from corridor.sandbox.nft import Ports, ruleset


def test_ruleset_redirects_tcp_and_dns_and_drops_the_rest():
    text = ruleset(Ports(transparent=15001, proxy=3128, dns=53))
    assert "meta l4proto tcp redirect to :15001" in text
    assert "th dport 53 redirect to :53" in text
    # DNS must be redirected before the catch-all TCP rule, or TCP DNS would be sniffed.
    assert text.index("th dport 53") < text.index("meta l4proto tcp redirect")
    assert "policy drop;" in text
    assert "ip daddr { 127.0.0.0/8, 198.19.255.254 } accept" in text
    assert "ip6 daddr { ::1, fd63:6f72:7269:646f:ffff:ffff:ffff:fffe } accept" in text
