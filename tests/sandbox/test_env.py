from corridor.sandbox.env import build_env

HOST = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/dev",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TERM": "xterm",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t",
    "GITHUB_TOKEN": "ghp_x",
    "OPENAI_API_KEY": "sk-x",
    "HTTP_PROXY": "http://corp-proxy.test:8080",
    "no_proxy": "*",
}


def test_allowlist_keeps_harmless_names_and_drops_secrets():
    e = build_env(HOST, proxy_port=3128, home="/home/dev", workspace="/home/dev/p")
    assert e.env["PATH"] == "/usr/bin:/bin"
    assert e.env["LC_ALL"] == "C.UTF-8"
    for secret in ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "OPENAI_API_KEY"):
        assert secret not in e.env
    assert e.dropped == ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "OPENAI_API_KEY")
    assert "s3cr3t" not in repr(e.dropped)


def test_proxy_variables_point_at_the_gateway_and_replace_the_hosts():
    e = build_env(HOST, proxy_port=3128, home="/h", workspace="/w")
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        assert e.env[name] == "http://127.0.0.1:3128"
    assert e.env["no_proxy"] == "localhost,127.0.0.1,::1"


def test_extra_names_pass_when_asked():
    e = build_env(HOST, proxy_port=3128, home="/h", workspace="/w", extra_names=["GITHUB_TOKEN"])
    assert e.env["GITHUB_TOKEN"] == "ghp_x"
    assert "GITHUB_TOKEN" not in e.dropped
