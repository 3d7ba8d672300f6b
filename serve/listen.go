package serve

import (
	"fmt"
	"net"
)

func listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w (use --addr HOST:PORT with a free port)", addr, err)
	}
	return ln, nil
}
