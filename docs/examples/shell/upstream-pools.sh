nginx-auth-fcgi serve \
  --upstream imap=10.0.0.1:143,10.0.0.2:143,[2001:db8::5]:143 \
  --upstream smtp=10.0.0.1:587 \
  --upstream-domain example.org:imap=10.0.1.1:143,10.0.1.2:143
