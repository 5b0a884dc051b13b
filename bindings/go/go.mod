module fpl

go 1.19
