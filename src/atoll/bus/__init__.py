"""Event and cancel delivery: in-process (``memory``) and, when scaled out, Redis."""
