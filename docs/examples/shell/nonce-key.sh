nginx-auth-fcgi nonce-key init /var/lib/nginx-auth-fcgi/nonce.key   # 0600; an existing file is left alone
# copy that one file to every instance (owned by the daemon's user), then on each:
nginx-auth-fcgi serve --nonce-key-file /var/lib/nginx-auth-fcgi/nonce.key --state redis://10.0.0.5:6379/0
