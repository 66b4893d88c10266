"""nftables back end: table ``ip cnipy`` (render.py: layout; transaction.py: typed objects; runner.py: Nft, FakeNft;
backend.py: the proxier)."""
