apt-get install nginx libnginx-mod-mail dovecot-imapd dovecot-sqlite   # Debian 12, as root
cargo run --release -- serve --log stderr &         # WARNs: no upstream set, so imap=127.0.0.1:10143,
                                                    # pop3=127.0.0.1:10110, smtp=127.0.0.1:10025
cargo run --release -- user add alice@example.org   # prompts for the password
useradd --system --home-dir /var/vmail --create-home vmail      # owns the mail Dovecot stores
cp docs/examples/dovecot/quickstart.conf /etc/dovecot/conf.d/99-nginx-auth-fcgi.conf  # imap 127.0.0.1, port = 10143
cp docs/examples/dovecot/nginx-auth-fcgi-sql.conf.ext /etc/dovecot/ && systemctl restart dovecot
cp nginx-conf/nginx.conf /etc/nginx/nginx.conf      # then edit the values marked EDIT
nginx -t && systemctl reload nginx
python3 -c 'import imaplib; print(imaplib.IMAP4("127.0.0.1").login("alice@example.org", input("password: ")))'
# ('OK', [b'[CAPABILITY IMAP4rev1 …] Logged in'])
