package bridge

// watched counts the streams the poller watches.
func watched() int {
	poller.mu.Lock()
	defer poller.mu.Unlock()
	return len(poller.byKey)
}
