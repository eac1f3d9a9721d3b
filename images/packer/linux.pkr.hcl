# vmfleet example: a Linux machine / remote-Docker image (Docker, docker-compose, the circleci user).
# Build:    packer init linux.pkr.hcl && packer build -var region=us-east-1 linux.pkr.hcl
# Register: vmfleet images register --packer-manifest packer-manifest.json --name ubuntu-2204 --version "$(date +%Y%m)-01" --kind linux

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "copy_to_regions" {
  type        = list(string)
  default     = []
  description = "Other regions to copy the AMI to; each lands in artifact_id as REGION:AMI."
}

variable "instance_type" {
  type    = string
  default = "m5.large"
}

source "amazon-ebs" "linux" {
  region        = var.region
  ami_regions   = var.copy_to_regions
  instance_type = var.instance_type
  ssh_username  = "ubuntu"
  ami_name      = "vmfleet-linux-{{timestamp}}"
  imds_support  = "v2.0"
  source_ami_filter {
    filters = {
      name                = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["099720109477"]
    most_recent = true
  }
  tags = {
    "vmfleet:image" = "linux"
  }
}

build {
  name    = "linux"
  sources = ["source.amazon-ebs.linux"]

  provisioner "shell" {
    execute_command = "sudo -E bash -eux '{{ .Path }}'"
    inline = [
      "export DEBIAN_FRONTEND=noninteractive",
      "apt-get update",
      "apt-get install -y ca-certificates curl git jq unzip docker.io docker-compose-v2",
      # The user vmfleet's cloud-init installs each VM's key for; in the docker group.
      "id circleci || useradd --create-home --shell /bin/bash circleci",
      "usermod -aG docker circleci",
      "echo 'circleci ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/circleci && chmod 0440 /etc/sudoers.d/circleci",
      "systemctl enable docker",
      # Docker's data root is where vmfleet mounts a project's DLC volume.
      "mkdir -p /var/lib/docker",
      "cloud-init clean --logs",
    ]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {
      arch = "x86_64"
      kind = "linux"
    }
  }
}
